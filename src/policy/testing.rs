//! The policy tests' constructors: the test kit's builders, and the rule ids
//! of violations.

pub use crate::testing::objects::*;

/// The rule ids of a list of violations, in order.
pub fn ids(violations: &[crate::policy::Violation]) -> Vec<&'static str> {
    violations.iter().map(|v| v.rule.id()).collect()
}
