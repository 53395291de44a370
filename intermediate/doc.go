// Package intermediate will hold the intermediate cluster: a Raft node
// (hashicorp/raft with raft-boltdb/v2), its state machine (the group's
// gapless sequence counter, the journal, the intermediate volumes, the valid
// counter, the bitmaps, the PREPARE/VALIDATE coordinator) and its gRPC
// server. It is built by the intermediate-cluster issue; nothing in it is
// used yet.
package intermediate
