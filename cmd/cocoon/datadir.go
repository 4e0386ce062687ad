package main

import (
	"os"
	"path/filepath"
)

// defaultDatadir is $COCOON_HOME, else ~/.cocoon.
func defaultDatadir() string {
	if d := os.Getenv("COCOON_HOME"); d != "" {
		return d
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return ".cocoon"
	}
	return filepath.Join(home, ".cocoon")
}
