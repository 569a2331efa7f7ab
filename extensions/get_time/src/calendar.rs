//! Proleptic Gregorian calendar arithmetic on day numbers counted from 1970-01-01.
//!
//! The conversions are Howard Hinnant's `days_from_civil` / `civil_from_days` algorithms; they
//! are exact for every date that fits the integer types and never panic.

/// A Gregorian calendar date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CivilDate {
    /// The year (astronomical numbering: year 0 is 1 BC).
    pub year: i64,
    /// The month, 1..=12.
    pub month: u8,
    /// The day of the month, 1..=31.
    pub day: u8,
}

/// Seconds in one day.
pub const SECONDS_PER_DAY: i64 = 86_400;

/// Whether `year` is a Gregorian leap year.
pub const fn is_leap_year(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

/// The number of days in `month` of `year`, or 0 when `month` is not 1..=12.
pub const fn days_in_month(year: i64, month: u8) -> u8 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Whether `year-month-day` is a real Gregorian date.
pub const fn is_valid_date(year: i64, month: u8, day: u8) -> bool {
    day >= 1 && day <= days_in_month(year, month)
}

/// The day number (days since 1970-01-01) of a Gregorian date. The date must be valid
/// (see [`is_valid_date`]) and `year` within ±10^15, or the result is meaningless.
pub const fn days_from_civil(year: i64, month: u8, day: u8) -> i64 {
    let month = month as i64;
    let day = day as i64;
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let shifted_month = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * shifted_month + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The Gregorian date of a day number (days since 1970-01-01), for any `days` within ±10^15.
pub const fn civil_from_days(days: i64) -> CivilDate {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 { shifted_month + 3 } else { shifted_month - 9 };
    let year = year_of_era + era * 400 + if month <= 2 { 1 } else { 0 };
    CivilDate { year, month: month as u8, day: day as u8 }
}

/// The ISO weekday of a day number: 1 = Monday … 7 = Sunday (1970-01-01 was a Thursday).
pub const fn iso_weekday(days: i64) -> u8 {
    ((days + 3).rem_euclid(7) + 1) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_day_numbers() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1900, 1, 31), -25_537);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        assert_eq!(civil_from_days(19_723), CivilDate { year: 2024, month: 1, day: 1 });
        assert_eq!(civil_from_days(-1), CivilDate { year: 1969, month: 12, day: 31 });
    }

    #[test]
    fn round_trip_over_three_centuries() {
        let start = days_from_civil(1899, 1, 1);
        let end = days_from_civil(2102, 12, 31);
        let mut expected = CivilDate { year: 1899, month: 1, day: 1 };
        for days in start..=end {
            let date = civil_from_days(days);
            assert_eq!(date, expected, "day {days}");
            assert_eq!(days_from_civil(date.year, date.month, date.day), days);
            // Advance `expected` by one day by hand, independently of the algorithms.
            if expected.day < days_in_month(expected.year, expected.month) {
                expected.day += 1;
            } else if expected.month < 12 {
                expected = CivilDate { year: expected.year, month: expected.month + 1, day: 1 };
            } else {
                expected = CivilDate { year: expected.year + 1, month: 1, day: 1 };
            }
        }
    }

    #[test]
    fn weekdays() {
        assert_eq!(iso_weekday(0), 4, "1970-01-01 was a Thursday");
        assert_eq!(iso_weekday(days_from_civil(2024, 2, 10)), 6, "2024-02-10 was a Saturday");
        assert_eq!(iso_weekday(days_from_civil(2000, 1, 2)), 7, "2000-01-02 was a Sunday");
        assert_eq!(iso_weekday(days_from_civil(1900, 1, 1)), 1, "1900-01-01 was a Monday");
    }

    #[test]
    fn validity() {
        assert!(is_valid_date(2024, 2, 29));
        assert!(!is_valid_date(2023, 2, 29));
        assert!(!is_valid_date(1900, 2, 29));
        assert!(is_valid_date(2000, 2, 29));
        assert!(!is_valid_date(2024, 13, 1));
        assert!(!is_valid_date(2024, 4, 31));
        assert!(!is_valid_date(2024, 1, 0));
    }
}
