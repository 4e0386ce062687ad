package settle

import (
	"bufio"
	"crypto/ed25519"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/xssnick/tonutils-go/address"
)

// Crash safety. The parent test re-executes the test binary as a
// child (TestCrashChild, switched on by COCOON_SETTLE_CRASH) that runs one
// side of a voucher exchange on a bbolt store, and kills it with SIGKILL at
// every step: inside the bbolt transaction before commit (before fsync),
// after the commit before the acknowledgement, and at random times (which
// land mid-write). After each kill it restarts the child on the same file
// and checks that the recovered state is the last one acknowledged to the
// other side, or the one in flight when the child died, and that the
// amounts add up: nothing lost, nothing paid twice.
//
// SIGKILL loses no page cache, so this checks the store's transaction
// discipline (write, fsync, then acknowledge), not the disk's behaviour on
// power loss, which bbolt's fsync ordering covers.

const crashDeposit = 1 << 40

var (
	crashClientKey = ed25519.NewKeyFromSeed(make([]byte, 32))
	crashWorkerKey = ed25519.NewKeyFromSeed(append(make([]byte, 31), 1))
	crashChannel   = Channel{
		ID:         ChannelID{0xc0, 0xc0},
		ClientKey:  crashClientKey.Public().(ed25519.PublicKey),
		WorkerKey:  crashWorkerKey.Public().(ed25519.PublicKey),
		ClientAddr: address.NewAddress(0, 0, make([]byte, 32)),
		WorkerAddr: address.NewAddress(0, 0, append(make([]byte, 31), 1)),
		Closing:    DefaultClosing,
	}
)

// TestCrashChild is the child process; it does nothing in a normal run.
func TestCrashChild(t *testing.T) {
	role := os.Getenv("COCOON_SETTLE_CRASH")
	if role == "" {
		return // only the crash tests run it, as a child process
	}
	if kill := os.Getenv("COCOON_SETTLE_KILLAT"); kill != "" {
		point, nth, _ := strings.Cut(kill, "#")
		n, _ := strconv.Atoi(nth)
		seen := 0
		crashHook = func(p string) {
			if p == point {
				seen++
				if seen == n {
					syscall.Kill(os.Getpid(), syscall.SIGKILL)
					select {} // never reached
				}
			}
		}
	}
	st, err := OpenStore(os.Getenv("COCOON_SETTLE_DB"), nil)
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(2)
	}
	out := bufio.NewWriter(os.Stdout)
	say := func(f string, a ...any) { fmt.Fprintf(out, f+"\n", a...); out.Flush() }
	if err := st.Check(); err != nil {
		say("CORRUPT %v", err)
		os.Exit(2)
	}
	in := bufio.NewScanner(os.Stdin)
	switch role {
	case "worker":
		payee := st.Payee(NewWallet(crashWorkerKey))
		if err := payee.AddChannel(crashChannel, crashDeposit); err != nil {
			say("ERR %v", err)
			os.Exit(2)
		}
		r, _ := payee.Latest(crashChannel.ID)
		say("READY %d %d", r.Seqno, r.Sent)
		for in.Scan() {
			b, err := hex.DecodeString(in.Text())
			if err != nil {
				say("ERR %v", err)
				continue
			}
			newly, err := payee.Accept(b)
			if err != nil {
				say("ERR %v", err)
				continue
			}
			v, _ := DecodeVoucher(b)
			say("ACK %d %d %d", v.State.Data.Seqno, v.State.Data.Sent, newly)
		}
	case "client":
		payer := st.Payer(NewWallet(crashClientKey))
		if err := payer.AddChannel(crashChannel, crashDeposit); err != nil {
			say("ERR %v", err)
			os.Exit(2)
		}
		r, _ := payer.Latest(crashChannel.ID)
		say("READY %d %d", r.Seqno, r.Sent)
		for in.Scan() {
			total, err := strconv.ParseUint(in.Text(), 10, 64)
			if err != nil {
				say("ERR %v", err)
				continue
			}
			b, err := payer.Pay(crashChannel.ID, total)
			if err != nil {
				say("ERR %v", err)
				continue
			}
			say("VOUCHER %x", b)
		}
	}
	os.Exit(0)
}

type crashChild struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

func startCrashChild(t *testing.T, role, db, killAt string) (*crashChild, uint64, uint64) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), "COCOON_SETTLE_CRASH="+role, "COCOON_SETTLE_DB="+db, "COCOON_SETTLE_KILLAT="+killAt)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	outR, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &crashChild{cmd: cmd, in: in, out: bufio.NewScanner(outR)}
	line, ok := c.read()
	var seq, sent uint64
	if !ok || !strings.HasPrefix(line, "READY ") {
		t.Fatalf("child did not start: %q", line)
	}
	fmt.Sscanf(line, "READY %d %d", &seq, &sent)
	return c, seq, sent
}

// read returns the next line, false when the child is gone.
func (c *crashChild) read() (string, bool) {
	if !c.out.Scan() {
		return "", false
	}
	return c.out.Text(), true
}

func (c *crashChild) kill() {
	c.cmd.Process.Signal(syscall.SIGKILL)
	c.in.Close()
	c.cmd.Wait()
}

func crashKillPoints(side string, iters int, rng *rand.Rand) []string {
	var out []string
	for i := 0; i < iters; i++ {
		switch i % 3 {
		case 0:
			out = append(out, fmt.Sprintf("%s:signed#%d", side, 1+rng.IntN(5)))
		case 1:
			out = append(out, fmt.Sprintf("%s:committed#%d", side, 1+rng.IntN(5)))
		default:
			out = append(out, "timer") // random SIGKILL from the parent
		}
	}
	return out
}

// crashIters is the number of kills per test: 90 (a third at each point),
// 30 with -short, or COCOON_SETTLE_CRASH_ITERS.
func crashIters() int {
	if n, err := strconv.Atoi(os.Getenv("COCOON_SETTLE_CRASH_ITERS")); err == nil && n > 0 {
		return n
	}
	if testing.Short() {
		return 30
	}
	return 90
}

// The worker dies while accepting; the parent is an honest client.
func TestCrashWorkerAccept(t *testing.T) {
	db := filepath.Join(t.TempDir(), "worker.db")
	clientStore, err := OpenStore(filepath.Join(t.TempDir(), "client.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer clientStore.Close()
	payer := clientStore.Payer(NewWallet(crashClientKey))
	if err := payer.AddChannel(crashChannel, crashDeposit); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	var ackedSeq, ackedSent, paidSum uint64 // what the worker acknowledged
	var inflight []byte                     // voucher sent, not acknowledged
	kills, lost, stored := 0, 0, 0
	prev := "" // kill point of the previous child
	for _, point := range crashKillPoints("accept", crashIters(), rng) {
		killAt := point
		if point == "timer" {
			killAt = ""
		}
		c, seq, sent := startCrashChild(t, "worker", db, killAt)
		// Recovered: the last acknowledged state, or the one in flight.
		var inSeq, inSent uint64
		if inflight != nil {
			v, _ := DecodeVoucher(inflight)
			inSeq, inSent = v.State.Data.Seqno, v.State.Data.Sent
		}
		switch {
		case seq == ackedSeq && sent == ackedSent:
			lost++
			if strings.HasPrefix(prev, "accept:committed") {
				t.Fatalf("killed after commit (%s) but the state in flight (%d, %d) is not recovered", prev, inSeq, inSent)
			}
		case inflight != nil && seq == inSeq && sent == inSent:
			// Stored (fsynced) before the kill, acknowledgement lost: the
			// store credited it then; the resend below must credit 0.
			stored++
			if strings.HasPrefix(prev, "accept:signed") {
				t.Fatalf("killed before commit (%s) but the uncommitted state (%d, %d) was recovered", prev, seq, sent)
			}
			paidSum += inSent - ackedSent
			ackedSeq, ackedSent = inSeq, inSent
		default:
			t.Fatalf("after kill at %s: recovered (%d, %d); acknowledged (%d, %d), in flight (%d, %d)", point, seq, sent, ackedSeq, ackedSent, inSeq, inSent)
		}
		var timer *time.Timer
		if point == "timer" {
			timer = time.AfterFunc(time.Duration(rng.IntN(4000))*time.Microsecond, func() { c.cmd.Process.Signal(syscall.SIGKILL) })
		}
		// Resend what was in flight, then pay more until the child dies.
		for n := 0; n < 40; n++ {
			v := inflight
			if v == nil {
				v, _, err = payer.Increase(crashChannel.ID, 1+uint64(rng.IntN(1_000_000)))
				if err != nil {
					t.Fatal(err)
				}
				inflight = v
			}
			if _, err := fmt.Fprintf(c.in, "%x\n", v); err != nil {
				break
			}
			line, ok := c.read()
			if !ok {
				break
			}
			var aSeq, aSent, newly uint64
			if _, err := fmt.Sscanf(line, "ACK %d %d %d", &aSeq, &aSent, &newly); err != nil {
				t.Fatalf("child: %q", line)
			}
			paidSum += newly
			ackedSeq, ackedSent, inflight = aSeq, aSent, nil
			if paidSum != ackedSent {
				t.Fatalf("acknowledged newly-paid amounts sum to %d, newest acknowledged state sends %d", paidSum, ackedSent)
			}
		}
		if timer != nil {
			timer.Stop()
		}
		c.kill()
		kills++
		prev = point
	}
	if lost == 0 || stored == 0 {
		t.Fatalf("kills never hit both sides of the commit: %d restarts recovered the acknowledged state, %d the stored unacknowledged one", lost, stored)
	}
	// Final restart: account for a stored but unacknowledged voucher as in
	// the loop, resend what is in flight; everything the client signed is
	// paid once.
	c, seq, sent := startCrashChild(t, "worker", db, "")
	defer c.kill()
	if inflight != nil {
		v, _ := DecodeVoucher(inflight)
		if seq == v.State.Data.Seqno && sent == v.State.Data.Sent {
			paidSum += sent - ackedSent
		} else if seq != ackedSeq || sent != ackedSent {
			t.Fatalf("final restart recovered (%d, %d); acknowledged (%d, %d)", seq, sent, ackedSeq, ackedSent)
		}
		fmt.Fprintf(c.in, "%x\n", inflight)
		line, _ := c.read()
		var aSeq, aSent, newly uint64
		if _, err := fmt.Sscanf(line, "ACK %d %d %d", &aSeq, &aSent, &newly); err != nil {
			t.Fatalf("child: %q", line)
		}
		paidSum += newly
		ackedSent = aSent
	}
	r, _ := payer.Latest(crashChannel.ID)
	if paidSum != r.Sent || ackedSent != r.Sent {
		t.Fatalf("client signed %d in total; worker acknowledged %d, newly-paid sum %d", r.Sent, ackedSent, paidSum)
	}
	t.Logf("%d kills (%d before commit, %d after); %d vouchers, %d nanoTON paid exactly once", kills, lost, stored, r.Seqno, paidSum)
}

// The client dies while paying; the parent is an honest worker.
func TestCrashClientPay(t *testing.T) {
	db := filepath.Join(t.TempDir(), "client.db")
	workerStore, err := OpenStore(filepath.Join(t.TempDir(), "worker.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer workerStore.Close()
	payee := workerStore.Payee(NewWallet(crashWorkerKey))
	if err := payee.AddChannel(crashChannel, crashDeposit); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	seen := map[uint64]uint64{} // seqno -> amount of every voucher received
	var gotSeq, gotSent, accepted uint64
	kills, before, after := 0, 0, 0
	prev := ""
	for _, point := range crashKillPoints("pay", crashIters(), rng) {
		killAt := point
		if point == "timer" {
			killAt = ""
		}
		c, seq, sent := startCrashChild(t, "client", db, killAt)
		// Recovered: the last voucher delivered, or one signed and stored
		// whose delivery the kill cut off.
		if !(seq == gotSeq && sent == gotSent) && seq != gotSeq+1 {
			t.Fatalf("after kill at %s: client recovered (%d, %d); worker received (%d, %d)", point, seq, sent, gotSeq, gotSent)
		}
		if seq < gotSeq || sent < gotSent {
			t.Fatalf("after kill at %s: client recovered (%d, %d) behind the delivered (%d, %d): a voucher was lost", point, seq, sent, gotSeq, gotSent)
		}
		if seq == gotSeq {
			before++
			if strings.HasPrefix(prev, "pay:committed") {
				t.Fatalf("killed after commit (%s) but the stored voucher %d is not recovered", prev, gotSeq+1)
			}
		} else {
			after++
			if strings.HasPrefix(prev, "pay:signed") {
				t.Fatalf("killed before commit (%s) but voucher %d was recovered", prev, seq)
			}
		}
		var timer *time.Timer
		if point == "timer" {
			timer = time.AfterFunc(time.Duration(rng.IntN(4000))*time.Microsecond, func() { c.cmd.Process.Signal(syscall.SIGKILL) })
		}
		// Ask for the recovered total first (re-delivers a stored, undelivered voucher), then more.
		next := sent
		for n := 0; n < 40; n++ {
			if _, err := fmt.Fprintf(c.in, "%d\n", next); err != nil {
				break
			}
			line, ok := c.read()
			if !ok {
				break
			}
			h, found := strings.CutPrefix(line, "VOUCHER ")
			if !found {
				t.Fatalf("child: %q", line)
			}
			b, _ := hex.DecodeString(h)
			v, err := DecodeVoucher(b)
			if err != nil {
				t.Fatal(err)
			}
			s, a := v.State.Data.Seqno, v.State.Data.Sent
			if prev, dup := seen[s]; dup && prev != a {
				t.Fatalf("client signed seqno %d twice: %d and %d", s, prev, a)
			}
			seen[s] = a
			newly, err := payee.Accept(b)
			if err != nil {
				t.Fatalf("accept after restart: %v", err)
			}
			accepted += newly
			gotSeq, gotSent = s, a
			next = a + 1 + uint64(rng.IntN(1_000_000))
		}
		if timer != nil {
			timer.Stop()
		}
		c.kill()
		kills++
		prev = point
	}
	if before == 0 || after == 0 {
		t.Fatalf("kills never hit both sides of the commit: %d before, %d after", before, after)
	}
	// Final restart: the client re-delivers what it stored; the worker then
	// holds exactly the client's recovered total.
	c, seq, sent := startCrashChild(t, "client", db, "")
	defer c.kill()
	fmt.Fprintf(c.in, "%d\n", sent)
	line, _ := c.read()
	h, found := strings.CutPrefix(line, "VOUCHER ")
	if !found {
		t.Fatalf("child: %q", line)
	}
	b, _ := hex.DecodeString(h)
	newly, err := payee.Accept(b)
	if err != nil {
		t.Fatal(err)
	}
	accepted += newly
	if v, _ := DecodeVoucher(b); v.State.Data.Seqno != seq {
		t.Fatalf("re-delivered seqno %d, recovered %d", v.State.Data.Seqno, seq)
	}
	gotSeq, gotSent = seq, sent
	bal, _ := payee.Balance(crashChannel.ID)
	if accepted != bal || bal != gotSent {
		t.Fatalf("worker accepted %d newly in total, balance %d, last voucher %d", accepted, bal, gotSent)
	}
	t.Logf("%d kills (%d before commit, %d after); %d vouchers, %d nanoTON accepted exactly once", kills, before, after, gotSeq, accepted)
}
