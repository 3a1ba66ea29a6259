//go:build !plumbcrash

// Package crashpoint marks the step boundaries of plugin verbs so crash
// tests can stop a plugin dead at each of them. In normal builds Here does
// nothing and costs nothing; builds with -tags plumbcrash honour
// PLUMB_CRASH_AT (SIGKILL at that point) and PLUMB_CRASH_TRACE (append each
// point passed to that file).
package crashpoint

// Here marks a step boundary named name ("bridge.add.veth", ...).
func Here(name string) {}
