//! Integration tests against the real services (`deploy/local/up.sh`). Each scenario is
//! a module; each test runs in its own namespace (topics, Redis prefix, databases).

mod attribution;
mod batch;
mod bi;
mod broker;
mod cluster;
mod crash;
mod dlq;
mod e2e;
mod finality;
mod group;
mod manifests;
mod mysql_outage;
mod read_path;
mod serving;
