package netlab

import (
	"context"
	"fmt"
	"io"
	"net"
	"runtime"

	"golang.org/x/sys/unix"
)

// inNS runs f on a thread that has entered network namespace ns; sockets f
// opens stay in ns. The thread is never unlocked, so it ends with f.
func inNS(ns string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		fd, err := unix.Open("/var/run/netns/"+ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- fmt.Errorf("open namespace %s: %w", ns, err)
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("enter namespace %s: %w", ns, err)
			return
		}
		errc <- f()
	}()
	return <-errc
}

// dialer dials TCP in namespace ns (the nodes' APIs listen on 127.0.0.1 of
// their own namespace).
func dialer(ns string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (c net.Conn, err error) {
		err = inNS(ns, func() error {
			var d net.Dialer
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

// forward listens on listen in namespace from and copies each connection to
// to in namespace toNS, until the listener closes: the dev ledger serves
// loopback only, and the nodes behind the NATs reach it through this.
func forward(from, listen, toNS, to string) (net.Listener, error) {
	var ln net.Listener
	err := inNS(from, func() (err error) {
		ln, err = net.Listen("tcp", listen)
		return err
	})
	if err != nil {
		return nil, err
	}
	dial := dialer(toNS)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				u, err := dial(context.Background(), "tcp", to)
				if err != nil {
					return
				}
				defer u.Close()
				go func() { io.Copy(u, c); u.(*net.TCPConn).CloseWrite() }()
				io.Copy(c, u)
			}()
		}
	}()
	return ln, nil
}
