//! The retry schedule as the operator writes it (`5s,5m,30m`), parsed once.

use std::fmt;
use std::time::Duration;

/// Delays before the 2nd, 3rd, … attempt of a delivery; the last one repeats
/// when more attempts are allowed than delays are listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule(Vec<Duration>);

impl RetrySchedule {
    /// Parses a comma-separated list of durations, such as `5s,5m,30m` or `100ms, 200ms`.
    pub fn parse(s: &str) -> Result<Self, String> {
        s.split(',')
            .map(|part| {
                let part = part.trim();
                humantime::parse_duration(part).map_err(|e| format!("{part:?} is not a duration: {e}"))
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    pub fn delays(&self) -> &[Duration] {
        &self.0
    }
}

/// The flag syntax again, so a schedule prints the way it is written.
impl fmt::Display for RetrySchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, delay) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}", humantime::format_duration(*delay))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_parse_from_the_flag_syntax() {
        let schedule = RetrySchedule::parse("100ms, 5s,5m,2h").unwrap();
        assert_eq!(
            schedule.delays(),
            [Duration::from_millis(100), Duration::from_secs(5), Duration::from_secs(300), Duration::from_secs(7200)]
        );
        assert_eq!(schedule.to_string(), "100ms,5s,5m,2h");
    }

    #[test]
    fn a_schedule_with_a_word_that_is_no_duration_is_refused() {
        assert!(RetrySchedule::parse("5s,often").unwrap_err().contains("\"often\""));
        assert!(RetrySchedule::parse("").is_err());
    }
}
