package spacer

// setns(2).
const sysSetns = 268
