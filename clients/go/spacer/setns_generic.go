//go:build arm64 || riscv64 || loong64

package spacer

// sysSetns is setns(2) in the generic system call table.
const sysSetns = 268
