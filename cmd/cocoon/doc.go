// Command cocoon is the one binary of the cocoon network: every node, worker or
// client, runs it. Each subcommand lives in its own file and registers itself on
// rootCmd in an init function. This package is only the commands' flags and how
// their results are printed; the work is done elsewhere: package node runs a
// node, client/local talks to a running one, client/batch runs `cocoon batch`,
// testnet launches the local testnet, and settle holds the wallet and channels.
// Nothing imports it.
package main
