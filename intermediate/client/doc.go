// Package client is the client of the intermediate cluster: primaries Submit
// batches through it, secondaries Fetch committed batches and keep their
// Coordinate link through it (and resync or fail back with ReadRegions and
// Failback), and the CLI asks it for Status, to Join or Remove nodes, and
// to Promote the group.
//
// # Submit
//
// A Client opens one Volume per primary volume. Volume.Submit and
// Volume.SubmitAsync give each batch the next volume seq under a lock, so
// volume seqs follow call order, seal it (wire.Seal) and queue it. Two
// goroutines serve a Volume:
//
//   - the sender goroutine (Volume.run), started by Client.OpenVolume, owns
//     the Submit stream: it drains every queued batch into one SubmitBatches
//     message (client-side group commit, up to Config.MaxMessage bytes and
//     Config.MaxInFlight unacknowledged bytes), and when the stream fails it
//     reconnects (following NOT_LEADER redirects, cycling through
//     Config.Addrs with backoff), re-opens the volume, checks that the
//     intermediate holds every acknowledged batch, and resends every
//     unacknowledged batch in order; the intermediate acknowledges a batch it
//     had already committed with its original seq, so a resend is
//     exactly-once;
//   - the receiver goroutine, started by the sender for each stream and
//     waited for before it reconnects, matches each ack against the oldest
//     batch in flight and completes its waiter.
//
// A permanent refusal (stale epoch, journal full, volume mismatch, ...) or an
// inconsistency (an ack out of order, acknowledged batches missing after a
// reconnect) breaks the Volume: every waiter fails with an error that
// matches both ErrBroken and the cause, and so does every later Submit.
// Retrying transient failures goes on in the background for as long as the
// Volume is open; each caller bounds its own wait with its context.
//
// # Fetch
//
// Client.Fetch streams the committed batches of one volume from any node and
// runs on the caller's goroutine. It checks every batch (wire.CheckBatch)
// before handing it over and stops at the first corrupt one (fail-stop); after
// a transport failure it reconnects to the next node and resumes after the
// last seq it delivered.
//
// # Coordinate
//
// Client.Coordinate opens a secondary's PREPARE/VALIDATE link (a Link)
// with the leader and keeps it open: its sender goroutine opens a
// Coordinate stream, sends the hello the secondary's Hello callback gives
// (its current applied and durable points), then what Link.Send queued
// (the latest PREPARED and APPLIED, best effort, and the latest report,
// again on every stream); a receiver goroutine per stream hands opened,
// PREPARE and VALIDATE to the OnMessage callback, one call at a time and in
// order. After a stream ends the link reconnects (following NOT_LEADER
// hints, with backoff), waiting as long as it takes for the volume to be
// registered (UNKNOWN_VOLUME); other refusals stop it for good (Link.Err).
//
// # Shutdown
//
// Client.Close cancels every stream, waits for every goroutine the Client
// started (Volumes' and Links' included, and for running Fetch calls to
// return), fails pending submits with ErrClosed and closes the cached gRPC
// connections.
package client
