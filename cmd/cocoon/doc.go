// Command cocoon is the one binary of the cocoon network: every node, worker or
// client, runs it. Each subcommand lives in its own file and registers itself on
// rootCmd in an init function; the work is done by package node (and testnet),
// which this command is the only importer of besides tests.
package main
