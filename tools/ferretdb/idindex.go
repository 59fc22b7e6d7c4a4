package main

// Why this file exists: FerretDB 1.24's SQLite backend pushes a filter of
// exactly {_id: <string|ObjectId>} down to SQL as
//
//	WHERE _ferretdb_sjson->'$._id' = ?
//
// (and updates/deletes by _id use the same expression), but the unique index
// it creates for _id is on _ferretdb_sjson->"_id". SQLite only uses an
// expression index when the query's expression matches the indexed one, so
// every find/findAndModify/update/delete by _id scans the whole table.
//
// We therefore add a second, plain index on the exact pushed-down expression
// to every collection table. Uniqueness is still enforced by FerretDB's own
// _id index. Ours is invisible to MongoDB clients (listIndexes and collStats
// read FerretDB's metadata, not sqlite_master) and SQLite drops it together
// with its table, so dropping a collection needs no cleanup here.

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"net/url"
	"path/filepath"
	"strings"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" driver FerretDB itself uses
)

const (
	// idIndexSuffix is appended to the table name to name our index. FerretDB
	// names its own indexes "<table>_<mongo index name>", so this only clashes
	// if a client creates a MongoDB index literally named "lanes_id".
	idIndexSuffix = "_lanes_id"

	// idIndexInterval is how often we look for new collections. Clients create
	// databases and collections at any time; a short delay before a new
	// collection gets its index only costs some table scans meanwhile.
	idIndexInterval = 2 * time.Second

	// metadataTable is FerretDB's per-database list of collections and the
	// tables backing them (internal/backends/sqlite/metadata/registry.go).
	metadataTable = "_ferretdb_collections"
)

// maintainIDIndexes indexes all collection tables in dir once immediately,
// then every idIndexInterval until ctx is done. It never fails: errors are
// logged, and FerretDB keeps working (just slower) without our indexes.
func maintainIDIndexes(ctx context.Context, dir string, l *slog.Logger) {
	t := time.NewTicker(idIndexInterval)
	defer t.Stop()

	for {
		// FerretDB stores each database as <dir>/<name>.sqlite (metadata/pool).
		files, _ := filepath.Glob(filepath.Join(dir, "*.sqlite")) // only fails on a bad pattern
		for _, f := range files {
			if err := indexDatabase(ctx, f, l); err != nil && ctx.Err() == nil {
				l.Warn("lanes: adding _id indexes failed", "file", f, "error", err)
			}
		}

		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// indexDatabase adds our _id index to every collection table of one database
// file that does not have it yet.
func indexDatabase(ctx context.Context, file string, l *slog.Logger) error {
	// mode=rw: never create the file, so a database a client dropped since the
	// Glob stays gone. busy_timeout: wait for FerretDB's own connections (WAL
	// mode) instead of failing with SQLITE_BUSY. The connection lives only for
	// this scan so we never hold a dropped database's file open.
	u := url.URL{Scheme: "file", Path: file, RawQuery: "mode=rw&_pragma=busy_timeout(10000)"}
	db, err := sql.Open("sqlite", u.String())
	if err != nil {
		return err
	}
	defer db.Close()
	db.SetMaxOpenConns(1)

	// A freshly created database file may not have its metadata table yet.
	var n int
	err = db.QueryRowContext(ctx,
		"SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?", metadataTable,
	).Scan(&n)
	if err != nil || n == 0 {
		return err
	}

	// Collection tables that exist and lack our index; already indexed tables
	// are skipped here, which keeps the periodic rescan cheap.
	rows, err := db.QueryContext(ctx, fmt.Sprintf(`
		SELECT m.table_name FROM %s AS m
		JOIN sqlite_master AS t ON t.type = 'table' AND t.name = m.table_name
		WHERE NOT EXISTS (
			SELECT 1 FROM sqlite_master AS i
			WHERE i.type = 'index' AND i.name = m.table_name || ?
		)`, quoteIdent(metadataTable)), idIndexSuffix)
	if err != nil {
		return err
	}
	var tables []string
	for rows.Next() {
		var t string
		if err := rows.Scan(&t); err != nil {
			rows.Close()
			return err
		}
		tables = append(tables, t)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}

	for _, t := range tables {
		start := time.Now()
		// The indexed expression must stay textually identical to FerretDB's
		// metadata.IDColumn (_ferretdb_sjson->'$._id'), or SQLite won't use it.
		q := fmt.Sprintf("CREATE INDEX IF NOT EXISTS %s ON %s (_ferretdb_sjson->'$._id')",
			quoteIdent(t+idIndexSuffix), quoteIdent(t))
		if _, err := db.ExecContext(ctx, q); err != nil {
			// Most likely the collection was dropped meanwhile; the next scan
			// sorts that out, so keep going with the other tables.
			l.Warn("lanes: creating _id index failed", "file", file, "table", t, "error", err)
			continue
		}
		l.Debug("lanes: created _id index", "file", file, "table", t, "took", time.Since(start))
	}
	return nil
}

// quoteIdent quotes an SQLite identifier.
func quoteIdent(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}
