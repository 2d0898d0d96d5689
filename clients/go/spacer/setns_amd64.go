package spacer

// sysSetns is setns(2), which package syscall names on some
// architectures only.
const sysSetns = 308
