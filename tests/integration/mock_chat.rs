//! The tests' Chat is the product's own stand-in, `chattail sandbox`'s code: what the
//! tests check is what users see in the sandbox. Tests start it with registered webhooks
//! only and reach its fault-injection interface (`push_fault`, `set_rate`, `outage`,
//! `set_delay`, `revoke`).

pub use chattail::sandbox::{Fault, Sandbox as MockChat};
