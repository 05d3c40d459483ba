//! The one integration-test binary of the `manifold` crate: real processes on loopback.

mod auth;
mod cli;
mod datapath;
mod faults;
mod first_hour;
mod hardening;
mod http;
mod matrix;
mod modern;
mod oauth;
mod peers;
mod policy;
mod reload;
mod review;
mod sso;
mod support;
