//! The server crate's one integration-test binary: the gateway in process, on a loopback port,
//! with seams of the tests' own, in front of the fixture upstream (`python3`).

mod parity;
mod seams;
mod support;
mod views;
