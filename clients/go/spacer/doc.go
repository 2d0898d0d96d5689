// Package spacer is a Go client of the spacer broker: it asks for new
// Linux namespaces over the broker's socket and receives them as open
// files. It speaks the client protocol of docs/PROTOCOL.md (version 1:
// MessagePack maps on an AF_UNIX SOCK_SEQPACKET socket, fds in
// SCM_RIGHTS) with the standard library alone.
//
// Trust level: it runs with the caller's privileges and believes nothing
// the other side sends unchecked: every received fd is checked by kind
// (NS_GET_NSTYPE for namespaces, pidfd_send_signal for the pidfd, SO_TYPE
// and the address family for a subspace's connection) and by its slot in
// the response, and a response that makes no sense is refused with every
// fd that came with it closed.
//
// The names follow the spacer service of the spacetest module, which
// spacer replaces: New, Rooms, Subspace, RoomsResponse, SubspaceResponse,
// Subspaces.
//
//	client, err := spacer.New(ctx) // SPACER_FD, else SPACER_SOCKET, else /run/spacer/spacer.sock
//	rooms, err := client.Rooms(syscall.CLONE_NEWNET | syscall.CLONE_NEWUTS)
//	defer rooms.Close() // the caller owns every *os.File
//	inside, sub, err := client.Subspace(syscall.CLONE_NEWUSER | syscall.CLONE_NEWPID)
//	defer inside.Close() // ends the subspace's service
//	defer sub.Close()
//	net, err := inside.Rooms(syscall.CLONE_NEWNET) // owned by sub.User
//
// Errors: a *ServiceError is the service's answer; match its kind with
// errors.Is(err, ErrDenied), ErrFailed, ErrInvalid or ErrUnavailable. A
// *ProtocolError (errors.Is(err, ErrProtocol)) is a response that could
// not be believed; ErrClosed a connection the service closed; anything
// else is a system call's error.
package spacer
