// Package pb holds the protobuf messages of the market's wire formats: the
// capacity ad gossiped on /cocoon/ads/1 and every message of the job protocol
// /cocoon/job/1.0.0. market.pb.go is generated from market.proto by
// scripts/protoc.sh; only package market imports this one.
package pb
