package spacer

import (
	"errors"
	"fmt"
)

// Kind is what an error response says failed: the `kind` field of the
// protocol's error map. Match on it (with errors.Is and the Err* values
// below); the reason is for humans.
type Kind string

// The kinds an error response can have.
const (
	// KindDenied: the policy says no, or a limit is reached.
	KindDenied Kind = "denied"
	// KindFailed: allowed, but creating the namespaces failed in the
	// worker; nothing was created.
	KindFailed Kind = "failed"
	// KindInvalid: the request itself is wrong (e.g. "out of space").
	KindInvalid Kind = "invalid"
	// KindUnavailable: the service cannot serve right now.
	KindUnavailable Kind = "unavailable"
)

// Sentinels to test a *ServiceError's kind with errors.Is, e.g.
// errors.Is(err, spacer.ErrDenied).
var (
	ErrDenied      = errors.New("denied")
	ErrFailed      = errors.New("failed")
	ErrInvalid     = errors.New("invalid request")
	ErrUnavailable = errors.New("unavailable")
)

// ErrProtocol is what every *ProtocolError matches with errors.Is.
var ErrProtocol = errors.New("bad response from the service")

// ErrClosed: the service closed the connection (a subspace's conn is
// closed when its subspace ends).
var ErrClosed = errors.New("spacer: the service closed the connection")

// ServiceError is an error response: the service answered, and said no.
type ServiceError struct {
	// Kind is the response's kind.
	Kind Kind
	// Reason is the response's reason, for humans (stable texts for the
	// protocol's own reasons, see docs/PROTOCOL.md "Reasons").
	Reason string
}

func (e *ServiceError) Error() string {
	return fmt.Sprintf("spacer: %s: %s", e.sentinel(), e.Reason)
}

func (e *ServiceError) sentinel() error {
	switch e.Kind {
	case KindDenied:
		return ErrDenied
	case KindFailed:
		return ErrFailed
	case KindInvalid:
		return ErrInvalid
	default:
		return ErrUnavailable
	}
}

// Unwrap gives the sentinel of the error's kind.
func (e *ServiceError) Unwrap() error { return e.sentinel() }

// ProtocolError is a response that could not be believed. Every fd that
// came with it has been closed.
type ProtocolError struct {
	// What was wrong with it.
	Problem string
}

func (e *ProtocolError) Error() string { return "spacer: bad response: " + e.Problem }

// Unwrap gives ErrProtocol.
func (e *ProtocolError) Unwrap() error { return ErrProtocol }

func protocolError(format string, args ...interface{}) error {
	return &ProtocolError{Problem: fmt.Sprintf(format, args...)}
}
