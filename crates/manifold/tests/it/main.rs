//! The one integration-test binary of the `manifold` crate: real processes on loopback.

mod faults;
mod peers;
mod support;
