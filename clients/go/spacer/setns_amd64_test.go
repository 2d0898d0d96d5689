package spacer

// setns(2), which package syscall names for arm64 only.
const sysSetns = 308
