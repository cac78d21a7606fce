package shop

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// databaseURL returns serverURL pointing at database name instead.
func databaseURL(serverURL, name string) (string, error) {
	u, err := url.Parse(serverURL)
	if err != nil {
		return "", fmt.Errorf("shop: DATABASE_URL: %w", err)
	}
	u.Path = "/" + name
	return u.String(), nil
}

// createDatabases creates the databases names on the server of serverURL,
// leaving the ones that already exist alone.
func createDatabases(ctx context.Context, serverURL string, names []string) error {
	conn, err := pgx.Connect(ctx, serverURL)
	if err != nil {
		return fmt.Errorf("shop: connect to %s (is Postgres running? set DATABASE_URL): %w", redact(serverURL), err)
	}
	defer conn.Close(ctx)
	for _, n := range names {
		_, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{n}.Sanitize())
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "42P04" { // duplicate_database: kept from an earlier run
			continue
		}
		if err != nil {
			return fmt.Errorf("shop: create database %s: %w", n, err)
		}
	}
	return nil
}

// dropDatabases drops names, closing the connections left open.
func dropDatabases(serverURL string, names []string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, serverURL)
	if err != nil {
		return fmt.Errorf("shop: drop databases: %w", err)
	}
	defer conn.Close(ctx)
	var errs []error
	for _, n := range names {
		if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{n}.Sanitize()+" WITH (FORCE)"); err != nil {
			errs = append(errs, fmt.Errorf("shop: drop database %s: %w", n, err))
		}
	}
	return errors.Join(errs...)
}

func redact(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "DATABASE_URL"
	}
	return u.Redacted()
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
