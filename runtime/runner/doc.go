// Package runner runs the embedded llama.cpp engine in a supervised child
// process, one per served model, so that a crash, abort or hang of native code
// that parses strangers' prompts fails the jobs in flight with a clean error
// instead of taking down the node, its payment channels and its peers.
//
// runtime/backends builds it for the llamacpp backend; the node, its tests and
// the testnet get it through there. The child is the same binary: this
// package's init takes over any process started with $COCOON_RUNNER=1 (see
// child.go), so cocoon and every test binary that imports this package can
// serve as a runner without a subcommand.
//
// The parent speaks to the child over two pipes (the child's fd 3 reads, fd 4
// writes; stdout and stderr are the child's log, which the parent keeps the
// tail of to explain a crash). Each frame is a 4-byte big-endian length and a
// JSON object of at most MaxFrame bytes:
//
//	P→C load{config}                 C→P ready{models, pid} | fatal{msg}
//	P→C generate{id, req}            C→P started{id} | error{id, kind, msg}
//	P→C credit{id, n}                C→P delta{id, text, tokens} … (at most
//	                                     Window deltas ahead of the credit)
//	                                 C→P end{id, usage, finish} | error{id, kind, msg}
//	P→C close{id}                    (the child aborts that generation)
//	P→C ping{id}                     C→P pong{id}
//
// The parent (Backend) restarts a child that exited with backoff, answers
// ErrBusy while none runs, kills one that misses pongs (a hang), and refuses a
// request shape that was in flight at RefuseAfter crashes rather than
// crash-looping on it.
package runner
