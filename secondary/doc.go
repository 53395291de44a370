// Package secondary will hold the secondary site: the follower loop that
// fetches committed batches, the durable staging store, the applier that
// moves a volume to a validated sequence number atomically for its readers,
// and promote. It is built by the secondaries issue; nothing in it is used
// yet.
package secondary
