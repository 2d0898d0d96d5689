package spacer_test

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"example.invalid/spacer/clients/go/spacer"
)

func TestLoopbackInNewNetworkNamespaces(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel() // closes the client
	// SPACER_FD (inside spacer run), else SPACER_SOCKET, else /run/spacer/spacer.sock
	client, err := spacer.New(ctx)
	if err != nil {
		t.Skipf("no spacer broker here: %v", err)
	}

	// As root: a network namespace, entered from a throw-away OS thread.
	rooms, err := client.RoomsWith(syscall.CLONE_NEWNET, spacer.RoomOptions{LoopbackUp: true})
	if errors.Is(err, spacer.ErrDenied) {
		t.Skipf("the policy says no: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer rooms.Close() // the test owns every *os.File it gets
	err = spacer.Execute(func() error {
		lo, err := net.InterfaceByName("lo")
		if err == nil && lo.Flags&net.FlagUp == 0 {
			err = errors.New("lo is down")
		}
		return err
	}, rooms.Net)
	if err != nil {
		t.Fatal(err)
	}

	// Any uid the policy grants user: a user namespace of its own, and a
	// network namespace made inside it, which a child enters (no Go
	// thread can join a user namespace).
	inside, sub, err := client.Subspace(syscall.CLONE_NEWUSER)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	defer inside.Close() // ends the subspace's service
	inner, err := inside.RoomsWith(syscall.CLONE_NEWNET, spacer.RoomOptions{LoopbackUp: true})
	if err != nil {
		t.Fatal(err)
	}
	defer inner.Close()
	cmd := exec.Command("nsenter", "--preserve-credentials",
		"--user=/proc/self/fd/3", "--net=/proc/self/fd/4", "--", "ip", "-o", "link", "show", "lo")
	cmd.ExtraFiles = []*os.File{sub.User, inner.Net}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "LOWER_UP") {
		t.Fatalf("%v: %s", err, out)
	}
}
