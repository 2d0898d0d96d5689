//go:build !amd64 && !arm64 && !riscv64 && !loong64

package spacer

// sysSetns is not known here: Execute fails.
const sysSetns = -1
