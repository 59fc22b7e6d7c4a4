// Command lanes-ferretdb runs FerretDB with its SQLite backend as a small,
// self-contained MongoDB-protocol server for Lanes' embedded default.
//
// FerretDB's own command cannot be built with `go install` (it panics on its
// missing version file), so Lanes embeds the library instead.
package main

import (
	"context"
	"flag"
	"log"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/FerretDB/FerretDB/ferretdb"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:27017", "TCP address to listen on")
	dataDir := flag.String("data", "data/ferretdb", "directory for the SQLite files")
	logLevel := flag.String("log-level", "warn", "debug, info, warn or error")
	flag.Parse()

	dir, err := filepath.Abs(*dataDir)
	if err != nil {
		log.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		log.Fatal(err)
	}

	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		log.Fatal(err)
	}
	logger := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	f, err := ferretdb.New(&ferretdb.Config{
		Listener:  ferretdb.ListenerConfig{TCP: *listen},
		Logger:    logger,
		Handler:   "sqlite",
		SQLiteURL: "file:" + dir + "/",
	})
	if err != nil {
		log.Fatal(err)
	}

	// SIGTERM and SIGINT end Run cleanly, so SQLite files are closed properly.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	// Work around FerretDB's _id lookups not using an index (see idindex.go).
	indexerDone := make(chan struct{})
	go func() {
		defer close(indexerDone)
		maintainIDIndexes(ctx, dir, logger)
	}()

	logger.Warn("lanes-ferretdb listening", "listen", *listen, "data", dir)
	err = f.Run(ctx)
	signaled := ctx.Err() != nil
	// Run returns on a signal or on error; either way stop the indexer and let
	// it abandon any statement in flight before the process exits.
	stop()
	<-indexerDone
	if err != nil && !signaled {
		log.Fatal(err)
	}
}
