package runner

import (
	"context"
	"errors"
	"strings"

	"github.com/cocoon-network/cocoon/runtime"
)

// ErrEngineCrashed fails the generations in flight when their child process
// exits or is killed. It wraps runtime.ErrUpstream: to the market it is a
// worker-side failure, so the client fails over and pays for what arrived.
var ErrEngineCrashed error = &remoteError{msg: "runner: engine process crashed", kind: runtime.ErrUpstream}

// ErrRefused is returned for a request shape that was in flight at RefuseAfter
// crashes of the engine; it wraps runtime.ErrInvalidRequest (a 400).
var ErrRefused error = &remoteError{msg: "runner: request refused: it was in flight each time the engine crashed", kind: runtime.ErrInvalidRequest}

// kinds name the errors that cross the pipe, so the parent can rebuild errors
// that errors.Is still recognises.
var kinds = []struct {
	name string
	err  error
}{
	{"unknown_model", runtime.ErrUnknownModel},
	{"invalid", runtime.ErrInvalidRequest},
	{"busy", runtime.ErrBusy},
	{"closed", runtime.ErrClosed},
	{"upstream", runtime.ErrUpstream},
	{"unbillable", runtime.ErrUnbillable},
	{"canceled", context.Canceled},
	{"deadline", context.DeadlineExceeded},
}

// errorFrame is the frame that carries err to the parent: its kind, and the
// field of a *runtime.FieldError, which the parent rebuilds.
func errorFrame(id uint64, err error) frame {
	f := frame{Op: opError, ID: id, Kind: kindOf(err), Msg: err.Error()}
	var fe *runtime.FieldError
	if errors.As(err, &fe) {
		f.Field, f.Msg = fe.Field, fe.Msg
	}
	return f
}

func kindOf(err error) string {
	for _, k := range kinds {
		if errors.Is(err, k.err) {
			return k.name
		}
	}
	return "other"
}

// remoteError is an error with its own text that errors.Is matches to a
// sentinel of package runtime: one that happened in the child, or one of this
// package's own.
type remoteError struct {
	msg  string
	kind error
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.kind }

func errorFrom(f frame) error {
	if f.Field != "" && f.Kind == "invalid" {
		return &runtime.FieldError{Field: f.Field, Msg: f.Msg}
	}
	for _, k := range kinds {
		if k.name == f.Kind {
			return &remoteError{msg: f.Msg, kind: k.err}
		}
	}
	return &remoteError{msg: f.Msg}
}

// oneLine keeps the first line of err's message, at most 300 bytes: a
// failed child's reason goes into one log line and into status.
func oneLine(err error) string {
	s := strings.TrimSpace(err.Error())
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}
