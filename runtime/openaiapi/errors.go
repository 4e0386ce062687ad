package openaiapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/cocoon-network/cocoon/runtime"
)

// Error is an API error with its HTTP status: what the handler answers, and
// what a decoder returns for a bad request.
type Error struct {
	Status  int
	Type    string // invalid_request_error, not_found_error, server_error, ...
	Code    string // optional machine code, e.g. model_not_found
	Param   string // optional request field at fault
	Message string
	Err     error // cause, for errors.Is; not sent
}

func (e *Error) Error() string { return e.Message }
func (e *Error) Unwrap() error { return e.Err }

// Body is the error as the OpenAI API encodes it.
func (e *Error) Body() ErrorResponse {
	b := ErrorResponse{Error: ErrorBody{Message: e.Message, Type: e.Type}}
	if e.Param != "" {
		b.Error.Param = &e.Param
	}
	if e.Code != "" {
		b.Error.Code = &e.Code
	}
	return b
}

func badRequest(param, format string, args ...any) *Error {
	return &Error{Status: http.StatusBadRequest, Type: "invalid_request_error", Param: param, Message: fmt.Sprintf(format, args...)}
}

// StatusError lets an error choose its HTTP status and type (a gateway's
// errors use it: market.NoWorkerError answers 502, 503 or 504); the handler
// asks for it with errors.As. If it also has an ErrorCode() string method,
// that is the answer's code.
type StatusError interface {
	error
	HTTPStatus() int
}

// ErrorFor maps an error of a Backend to the API error the handler sends: a
// StatusError's own status, runtime.ErrUnknownModel 404, ErrInvalidRequest
// 400, ErrBusy 503, ErrUpstream and ErrUnbillable 502, a timeout 504, anything
// else 500. OpenAI clients retry 502, 503 and 504: those are for failures on
// the network's side.
func ErrorFor(err error) *Error {
	var ae *Error
	if errors.As(err, &ae) {
		return ae
	}
	e := &Error{Status: http.StatusInternalServerError, Type: "server_error", Message: err.Error(), Err: err}
	var se StatusError
	switch {
	case errors.As(err, &se):
		e.Status = se.HTTPStatus()
		if e.Status >= 400 && e.Status < 500 {
			e.Type = "invalid_request_error"
		}
		if c, ok := se.(interface{ ErrorCode() string }); ok {
			e.Code = c.ErrorCode()
		}
	case errors.Is(err, runtime.ErrUnknownModel):
		e.Status, e.Type, e.Code, e.Param = http.StatusNotFound, "invalid_request_error", "model_not_found", "model"
	case errors.Is(err, runtime.ErrInvalidRequest):
		e.Status, e.Type = http.StatusBadRequest, "invalid_request_error"
		if fe := (*runtime.FieldError)(nil); errors.As(err, &fe) {
			e.Param = fe.Field
		}
	case errors.Is(err, runtime.ErrBusy):
		e.Status, e.Type, e.Code = http.StatusServiceUnavailable, "server_error", "busy"
	case errors.Is(err, runtime.ErrUnbillable):
		e.Status, e.Code = http.StatusBadGateway, "unbillable"
	case errors.Is(err, context.DeadlineExceeded):
		e.Status, e.Code = http.StatusGatewayTimeout, "timeout"
	case errors.Is(err, runtime.ErrUpstream):
		e.Status, e.Code = http.StatusBadGateway, "upstream_error"
	case errors.Is(err, runtime.ErrClosed):
		e.Status, e.Code = http.StatusServiceUnavailable, "shutting_down"
	case errors.Is(err, context.Canceled):
		// The client went away; the status is for the log only.
		e.Status, e.Code = 499, "canceled"
	}
	return e
}
