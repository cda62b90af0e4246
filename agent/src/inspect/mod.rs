//! `iamlet inspect`: which pods the agent on this node knows, and what it gave each.
//!
//! - [`inventory`]: the agent's side, gathered when `GET /debug/pods` is asked (node-local
//!   clients only, see `server::admin`);
//! - [`report`]: what that route answers (JSON), read back by the CLI;
//! - [`client`]: one HTTP/1.1 exchange with the admin server;
//! - [`table`]: the table `iamlet inspect` prints;
//! - `cli`: the `iamlet inspect` and `iamlet log-filter` commands.
//!
//! ```text
//! $ iamlet inspect
//! 2 pods (kubernetes mode on node node-a) at 2026-12-01T04:00:00Z
//! POD             UID         CGROUP ID  ROLE                                 SOURCE  ACCESS KEY   EXPIRES  LAST REQUEST  SERVED  REFUSED
//! shop/cart-7d9f  0b6f8a3e-…  4211       arn:aws:iam::123456789012:role/cart  sts     ASIAEXAMPLE  in 54m   3s ago        12      0
//! ```

mod cli;
pub(crate) mod client;
pub(crate) mod inventory;
pub(crate) mod report;
pub(crate) mod table;

pub use cli::{inspect, log_filter};
