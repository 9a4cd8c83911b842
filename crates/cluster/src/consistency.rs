//! Read consistency, parsed once from the number the wire carries.
//!
//! The public API's `Consistency` enum says that 0 (`CONSISTENCY_UNSPECIFIED`, what every
//! client sends when it sets nothing) means linearizable. Services turn the number into a
//! [`Consistency`] at their edge with [`Consistency::try_from`]; nothing inside takes the raw
//! number, so no code path can mistake the default for "any replica".

/// How fresh a check's answer must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Consistency {
    /// Reflects every insert acknowledged before the check started: the replica answering
    /// first confirms it leads (a ReadIndex round) and applies up to that point.
    #[default]
    Linearizable,
    /// Any replica's applied state: fastest, may miss a very recent insert (never invents a
    /// removal: filters only grow).
    Any,
}

/// A consistency number the API does not define.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "consistency {0} is unknown: use 1 (CONSISTENCY_LINEARIZABLE), 2 (CONSISTENCY_ANY_REPLICA) \
     or 0 (unspecified: linearizable)"
)]
pub struct UnknownConsistency(pub i32);

impl Consistency {
    /// The wire number of `CONSISTENCY_LINEARIZABLE`.
    pub const LINEARIZABLE: i32 = 1;
    /// The wire number of `CONSISTENCY_ANY_REPLICA`.
    pub const ANY: i32 = 2;

    /// The number this consistency travels as (never 0: forwarded requests say what they
    /// mean).
    pub fn wire(self) -> i32 {
        match self {
            Consistency::Linearizable => Self::LINEARIZABLE,
            Consistency::Any => Self::ANY,
        }
    }

    /// The word used in flags, config, logs and metrics: `linearizable` or `any`.
    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::Linearizable => "linearizable",
            Consistency::Any => "any",
        }
    }
}

impl TryFrom<i32> for Consistency {
    type Error = UnknownConsistency;

    /// 0 (unspecified) and 1 are linearizable, 2 is any replica.
    fn try_from(wire: i32) -> Result<Consistency, UnknownConsistency> {
        match wire {
            0 | Self::LINEARIZABLE => Ok(Consistency::Linearizable),
            Self::ANY => Ok(Consistency::Any),
            other => Err(UnknownConsistency(other)),
        }
    }
}

impl std::fmt::Display for Consistency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Consistency {
    type Err = String;

    fn from_str(text: &str) -> Result<Consistency, String> {
        match text {
            "linearizable" => Ok(Consistency::Linearizable),
            "any" => Ok(Consistency::Any),
            other => Err(format!(
                "consistency {other:?} is unknown: use linearizable or any"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_means_linearizable() {
        assert_eq!(Consistency::try_from(0), Ok(Consistency::Linearizable));
        assert_eq!(Consistency::try_from(1), Ok(Consistency::Linearizable));
        assert_eq!(Consistency::try_from(2), Ok(Consistency::Any));
        assert_eq!(Consistency::try_from(3), Err(UnknownConsistency(3)));
        assert_eq!(Consistency::try_from(-1), Err(UnknownConsistency(-1)));
        assert_eq!(Consistency::default(), Consistency::Linearizable);
    }

    #[test]
    fn wire_numbers_and_words_round_trip() {
        for consistency in [Consistency::Linearizable, Consistency::Any] {
            assert_eq!(Consistency::try_from(consistency.wire()), Ok(consistency));
            assert_eq!(consistency.to_string().parse(), Ok(consistency));
        }
        assert!("any-replica".parse::<Consistency>().is_err());
    }
}
