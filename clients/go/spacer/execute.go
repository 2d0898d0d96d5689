package spacer

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"syscall"
)

// Execute runs fn on a new OS thread that has first joined the namespaces
// of files (each one's type is asked of the kernel, NS_GET_NSTYPE), and
// returns fn's error. The thread is locked to fn's goroutine and never
// unlocked, so the Go runtime ends it afterwards: nothing else ever runs
// in those namespaces, and the caller's threads stay where they were.
// (Like spacetest's Execute, but always on a throw-away thread.)
//
// A mount namespace is joined after unshare(CLONE_FS) of that thread, as
// the kernel requires in a multi-threaded process. Joining a PID
// namespace puts the children fn starts (exec.Cmd) into it: the first is
// its PID 1. User and time namespaces the kernel lets only
// single-threaded processes join, which no Go program is: Execute refuses
// them; run a child through nsenter(1) instead (ExtraFiles and
// --user=/proc/self/fd/3 ...).
func Execute(fn func() error, files ...*os.File) error {
	type ns struct {
		f *os.File
		t Spaces
	}
	var join []ns
	for _, f := range files {
		t, err := nsType(int(f.Fd()))
		if err != nil {
			return fmt.Errorf("spacer: %s is no namespace: %w", f.Name(), err)
		}
		if t == User || t == Time {
			return fmt.Errorf("spacer: cannot join the %v namespace %s from a thread: the kernel allows that only to single-threaded processes", t, f.Name())
		}
		join = append(join, ns{f, t})
	}
	done := make(chan error)
	go func() {
		runtime.LockOSThread() // for good: the thread ends with this goroutine
		for _, n := range join {
			if n.t == Mnt {
				if err := syscall.Unshare(syscall.CLONE_FS); err != nil {
					done <- fmt.Errorf("spacer: unshare(CLONE_FS): %w", err)
					return
				}
				break
			}
		}
		for _, n := range join {
			if err := setns(int(n.f.Fd()), n.t); err != nil {
				done <- fmt.Errorf("spacer: joining the %v namespace %s: %w", n.t, n.f.Name(), os.NewSyscallError("setns", err))
				return
			}
		}
		done <- fn()
	}()
	return <-done
}

func setns(fd int, t Spaces) error {
	nr := sysSetns
	if nr < 0 {
		return errors.New("setns: not known on " + runtime.GOARCH)
	}
	_, _, errno := syscall.Syscall(uintptr(nr), uintptr(fd), uintptr(t), 0)
	if errno != 0 {
		return errno
	}
	return nil
}
