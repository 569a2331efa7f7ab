//! Chinese lunisolar (农历) calendar conversion for the lunar years 1900–2100.
//!
//! The standard table-driven algorithm: one 20-bit word per lunar year, counting days from
//! lunar 1900-01-01 = Gregorian 1900-01-31. Bits of a year word:
//!
//! * bits 0–3: the month that is followed by a leap month (1..=12), or 0 for none;
//! * bits 4–15: month lengths, bit `16 - m` set when month `m` has 30 days (else 29);
//! * bit 16: set when the leap month has 30 days (else 29).
//!
//! The table is the one commonly copied between calendar libraries (for example `calendar.js`
//! and Python's `lunardate`) with three corrections, in 1933, 1954 and 1978, where that table
//! puts a month start one day off the new moon (Beijing time). With them, every day from
//! 1901-02-19 to the end of lunar 2099 agrees with the Hong Kong Observatory-derived table of
//! the Python `cnlunar` package (used by the reference xiaozhi server), and the month starts
//! of 1900 and 2100 agree with computed new moons.

use crate::calendar;

/// The first lunar year the table covers.
pub const FIRST_YEAR: i32 = 1900;
/// The last lunar year the table covers.
pub const LAST_YEAR: i32 = 2100;

/// Year words for lunar years 1900..=2100 (see the module documentation).
const YEAR_INFO: [u32; 201] = [
    0x04bd8, 0x04ae0, 0x0a570, 0x054d5, 0x0d260, 0x0d950, 0x16554, 0x056a0, 0x09ad0, 0x055d2, // 1900-1909
    0x04ae0, 0x0a5b6, 0x0a4d0, 0x0d250, 0x1d255, 0x0b540, 0x0d6a0, 0x0ada2, 0x095b0, 0x14977, // 1910-1919
    0x04970, 0x0a4b0, 0x0b4b5, 0x06a50, 0x06d40, 0x1ab54, 0x02b60, 0x09570, 0x052f2, 0x04970, // 1920-1929
    0x06566, 0x0d4a0, 0x0ea50, 0x16a95, 0x05ad0, 0x02b60, 0x186e3, 0x092e0, 0x1c8d7, 0x0c950, // 1930-1939
    0x0d4a0, 0x1d8a6, 0x0b550, 0x056a0, 0x1a5b4, 0x025d0, 0x092d0, 0x0d2b2, 0x0a950, 0x0b557, // 1940-1949
    0x06ca0, 0x0b550, 0x15355, 0x04da0, 0x0a5b0, 0x14573, 0x052b0, 0x0a9a8, 0x0e950, 0x06aa0, // 1950-1959
    0x0aea6, 0x0ab50, 0x04b60, 0x0aae4, 0x0a570, 0x05260, 0x0f263, 0x0d950, 0x05b57, 0x056a0, // 1960-1969
    0x096d0, 0x04dd5, 0x04ad0, 0x0a4d0, 0x0d4d4, 0x0d250, 0x0d558, 0x0b540, 0x0b6a0, 0x195a6, // 1970-1979
    0x095b0, 0x049b0, 0x0a974, 0x0a4b0, 0x0b27a, 0x06a50, 0x06d40, 0x0af46, 0x0ab60, 0x09570, // 1980-1989
    0x04af5, 0x04970, 0x064b0, 0x074a3, 0x0ea50, 0x06b58, 0x05ac0, 0x0ab60, 0x096d5, 0x092e0, // 1990-1999
    0x0c960, 0x0d954, 0x0d4a0, 0x0da50, 0x07552, 0x056a0, 0x0abb7, 0x025d0, 0x092d0, 0x0cab5, // 2000-2009
    0x0a950, 0x0b4a0, 0x0baa4, 0x0ad50, 0x055d9, 0x04ba0, 0x0a5b0, 0x15176, 0x052b0, 0x0a930, // 2010-2019
    0x07954, 0x06aa0, 0x0ad50, 0x05b52, 0x04b60, 0x0a6e6, 0x0a4e0, 0x0d260, 0x0ea65, 0x0d530, // 2020-2029
    0x05aa0, 0x076a3, 0x096d0, 0x04afb, 0x04ad0, 0x0a4d0, 0x1d0b6, 0x0d250, 0x0d520, 0x0dd45, // 2030-2039
    0x0b5a0, 0x056d0, 0x055b2, 0x049b0, 0x0a577, 0x0a4b0, 0x0aa50, 0x1b255, 0x06d20, 0x0ada0, // 2040-2049
    0x14b63, 0x09370, 0x049f8, 0x04970, 0x064b0, 0x168a6, 0x0ea50, 0x06aa0, 0x1a6c4, 0x0aae0, // 2050-2059
    0x092e0, 0x0d2e3, 0x0c960, 0x0d557, 0x0d4a0, 0x0da50, 0x05d55, 0x056a0, 0x0a6d0, 0x055d4, // 2060-2069
    0x052d0, 0x0a9b8, 0x0a950, 0x0b4a0, 0x0b6a6, 0x0ad50, 0x055a0, 0x0aba4, 0x0a5b0, 0x052b0, // 2070-2079
    0x0b273, 0x06930, 0x07337, 0x06aa0, 0x0ad50, 0x14b55, 0x04b60, 0x0a570, 0x054e4, 0x0d160, // 2080-2089
    0x0e968, 0x0d520, 0x0daa0, 0x16aa6, 0x056d0, 0x04ae0, 0x0a9d4, 0x0a2d0, 0x0d150, 0x0f252, // 2090-2099
    0x0d520, // 2100-2100
];

/// Day number (days since 1970-01-01) of lunar 1900-01-01, i.e. Gregorian 1900-01-31.
const FIRST_DAY: i64 = calendar::days_from_civil(1900, 1, 31);

/// Heavenly stems (天干).
const STEMS: [&str; 10] = ["甲", "乙", "丙", "丁", "戊", "己", "庚", "辛", "壬", "癸"];
/// Earthly branches (地支).
const BRANCHES: [&str; 12] = ["子", "丑", "寅", "卯", "辰", "巳", "午", "未", "申", "酉", "戌", "亥"];
/// Zodiac animals (生肖), in branch order.
const ZODIAC: [&str; 12] = ["鼠", "牛", "虎", "兔", "龙", "蛇", "马", "羊", "猴", "鸡", "狗", "猪"];
/// English names of the zodiac animals, in branch order.
const ZODIAC_EN: [&str; 12] =
    ["Rat", "Ox", "Tiger", "Rabbit", "Dragon", "Snake", "Horse", "Goat", "Monkey", "Rooster", "Dog", "Pig"];
/// Month names without the final 月.
const MONTHS: [&str; 12] = ["正", "二", "三", "四", "五", "六", "七", "八", "九", "十", "冬", "腊"];
/// Tens prefixes of day names.
const DAY_TENS: [&str; 4] = ["初", "十", "廿", "三"];
/// Units of day names.
const DAY_UNITS: [&str; 10] = ["一", "二", "三", "四", "五", "六", "七", "八", "九", "十"];

/// A date in the Chinese lunisolar calendar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LunarDate {
    /// The lunar year (it starts at the Spring Festival, not on 1 January).
    pub year: i32,
    /// The month, 1..=12; a leap month has the number of the month it follows.
    pub month: u8,
    /// The day of the month, 1..=30.
    pub day: u8,
    /// Whether `month` is the leap month (闰月) of the year.
    pub is_leap_month: bool,
}

/// The year word of `year`, or none outside 1900..=2100.
fn year_info(year: i32) -> Option<u32> {
    let index = usize::try_from(year.checked_sub(FIRST_YEAR)?).ok()?;
    YEAR_INFO.get(index).copied()
}

/// The month that a leap month follows in `year`, or none when the year has no leap month
/// (or lies outside the table).
pub fn leap_month(year: i32) -> Option<u8> {
    let leap = (year_info(year)? & 0xf) as u8;
    (1..=12).contains(&leap).then_some(leap)
}

/// The number of days of the leap month of `year`, or 0 when it has none.
fn leap_month_days(year: i32) -> u16 {
    match (leap_month(year), year_info(year)) {
        (Some(_), Some(info)) if info & 0x1_0000 != 0 => 30,
        (Some(_), Some(_)) => 29,
        _ => 0,
    }
}

/// The number of days of the ordinary (non-leap) `month` of `year`, or none when the year is
/// outside the table or `month` is not 1..=12.
pub fn month_days(year: i32, month: u8) -> Option<u16> {
    if !(1..=12).contains(&month) {
        return None;
    }
    let info = year_info(year)?;
    Some(if info & (0x1_0000 >> month) != 0 { 30 } else { 29 })
}

/// The number of days of lunar `year`, or none outside the table.
pub fn year_days(year: i32) -> Option<u16> {
    let info = year_info(year)?;
    let long_months = (info & 0xfff0).count_ones() as u16;
    Some(12 * 29 + long_months + leap_month_days(year))
}

/// The lunar date of a day number (days since 1970-01-01), or none outside lunar 1900–2100
/// (Gregorian 1900-01-31 to 2101-01-28).
pub fn from_days(days: i64) -> Option<LunarDate> {
    let mut offset = days.checked_sub(FIRST_DAY)?;
    if offset < 0 {
        return None;
    }
    let mut year = FIRST_YEAR;
    loop {
        let length = i64::from(year_days(year)?);
        if offset < length {
            break;
        }
        offset -= length;
        year += 1;
    }
    let leap = leap_month(year);
    for month in 1..=12u8 {
        let length = i64::from(month_days(year, month)?);
        if offset < length {
            return lunar_date(year, month, offset, false);
        }
        offset -= length;
        if leap == Some(month) {
            let length = i64::from(leap_month_days(year));
            if offset < length {
                return lunar_date(year, month, offset, true);
            }
            offset -= length;
        }
    }
    // Unreachable when `year_days` agrees with the month lengths; stay total anyway.
    None
}

/// Builds a date from a zero-based day offset within the month.
fn lunar_date(year: i32, month: u8, offset: i64, is_leap_month: bool) -> Option<LunarDate> {
    let day = u8::try_from(offset.checked_add(1)?).ok()?;
    Some(LunarDate { year, month, day, is_leap_month })
}

/// The lunar date of the Gregorian date `year-month-day`, or none when that date is invalid
/// or outside the table.
pub fn from_solar(year: i64, month: u8, day: u8) -> Option<LunarDate> {
    if !(1800..=2200).contains(&year) || !calendar::is_valid_date(year, month, day) {
        return None;
    }
    from_days(calendar::days_from_civil(year, month, day))
}

impl LunarDate {
    /// Index of the year in the sexagenary (干支) cycle, 0 = 甲子.
    fn cycle_index(&self) -> usize {
        (i64::from(self.year) - 4).rem_euclid(60) as usize
    }

    /// The sexagenary name of the year, for example `甲辰`.
    pub fn ganzhi_year(&self) -> String {
        let index = self.cycle_index();
        let stem = STEMS.get(index % 10).copied().unwrap_or_default();
        let branch = BRANCHES.get(index % 12).copied().unwrap_or_default();
        format!("{stem}{branch}")
    }

    /// The zodiac animal of the year in Chinese, for example `龙`.
    pub fn zodiac(&self) -> &'static str {
        ZODIAC.get(self.cycle_index() % 12).copied().unwrap_or_default()
    }

    /// The zodiac animal of the year in English, for example `Dragon`.
    pub fn zodiac_en(&self) -> &'static str {
        ZODIAC_EN.get(self.cycle_index() % 12).copied().unwrap_or_default()
    }

    /// The Chinese month name, for example `正月`, `闰二月`, `冬月` or `腊月`.
    pub fn month_name(&self) -> String {
        let name = MONTHS.get(usize::from(self.month).wrapping_sub(1)).copied().unwrap_or("?");
        let leap = if self.is_leap_month { "闰" } else { "" };
        format!("{leap}{name}月")
    }

    /// The Chinese day name, for example `初一`, `十五`, `二十`, `廿三` or `三十`.
    pub fn day_name(&self) -> String {
        match self.day {
            10 => "初十".to_owned(),
            20 => "二十".to_owned(),
            30 => "三十".to_owned(),
            day => {
                let tens = DAY_TENS.get(usize::from(day / 10)).copied().unwrap_or("?");
                let unit = DAY_UNITS.get(usize::from(day % 10).wrapping_sub(1)).copied().unwrap_or("?");
                format!("{tens}{unit}")
            }
        }
    }

    /// The full Chinese form, for example `甲辰年（龙年）正月初一`.
    pub fn to_chinese(&self) -> String {
        format!("{}年（{}年）{}{}", self.ganzhi_year(), self.zodiac(), self.month_name(), self.day_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lunar(year: i32, month: u8, day: u8, is_leap_month: bool) -> Option<LunarDate> {
        Some(LunarDate { year, month, day, is_leap_month })
    }

    #[test]
    fn known_dates() {
        assert_eq!(from_solar(1900, 1, 31), lunar(1900, 1, 1, false));
        assert_eq!(from_solar(1949, 10, 1), lunar(1949, 8, 10, false));
        assert_eq!(from_solar(2000, 2, 5), lunar(2000, 1, 1, false));
        assert_eq!(from_solar(2020, 5, 23), lunar(2020, 4, 1, true), "2020 had a leap fourth month");
        assert_eq!(from_solar(2023, 3, 22), lunar(2023, 2, 1, true), "2023 had a leap second month");
        assert_eq!(from_solar(2023, 3, 21), lunar(2023, 2, 30, false));
        assert_eq!(from_solar(2024, 2, 9), lunar(2023, 12, 30, false), "New Year's Eve 2024");
        assert_eq!(from_solar(2024, 2, 10), lunar(2024, 1, 1, false));
        assert_eq!(from_solar(2024, 9, 17), lunar(2024, 8, 15, false), "Mid-Autumn 2024");
        assert_eq!(from_solar(2026, 2, 17), lunar(2026, 1, 1, false));
        assert_eq!(from_solar(2100, 2, 9), lunar(2100, 1, 1, false));
    }

    #[test]
    fn corrected_years() {
        // New moons at 1933-07-23 00:03, 1954-11-25 20:30 and 1978-09-03 00:09 (UTC+8).
        assert_eq!(from_solar(1933, 7, 22), lunar(1933, 5, 30, true));
        assert_eq!(from_solar(1933, 7, 23), lunar(1933, 6, 1, false));
        assert_eq!(from_solar(1954, 11, 25), lunar(1954, 11, 1, false));
        assert_eq!(from_solar(1978, 9, 2), lunar(1978, 7, 30, false));
        assert_eq!(from_solar(1978, 9, 17), lunar(1978, 8, 15, false), "Mid-Autumn 1978");
    }

    #[test]
    fn range_limits() {
        assert_eq!(from_solar(1900, 1, 30), None);
        assert_eq!(from_solar(1899, 12, 31), None);
        assert_eq!(from_solar(2101, 1, 28), lunar(2100, 12, 29, false));
        assert_eq!(from_solar(2101, 1, 29), None);
        assert_eq!(from_solar(2024, 2, 30), None, "not a Gregorian date");
        assert_eq!(from_days(i64::MIN), None);
        assert_eq!(from_days(i64::MAX), None);
    }

    /// Spring Festival (lunar 1-1) of 1901..=2100 as (month, day) in Gregorian; from the
    /// `lunarNewYearList` of the Python `cnlunar` package, a table independent of `YEAR_INFO`.
    const SPRING_FESTIVALS: [(u8, u8); 200] = [
        (2, 19),
        (2, 8),
        (1, 29),
        (2, 16),
        (2, 4),
        (1, 25),
        (2, 13),
        (2, 2),
        (1, 22),
        (2, 10), // 1901-1910
        (1, 30),
        (2, 18),
        (2, 6),
        (1, 26),
        (2, 14),
        (2, 3),
        (1, 23),
        (2, 11),
        (2, 1),
        (2, 20), // 1911-1920
        (2, 8),
        (1, 28),
        (2, 16),
        (2, 5),
        (1, 24),
        (2, 13),
        (2, 2),
        (1, 23),
        (2, 10),
        (1, 30), // 1921-1930
        (2, 17),
        (2, 6),
        (1, 26),
        (2, 14),
        (2, 4),
        (1, 24),
        (2, 11),
        (1, 31),
        (2, 19),
        (2, 8), // 1931-1940
        (1, 27),
        (2, 15),
        (2, 5),
        (1, 25),
        (2, 13),
        (2, 2),
        (1, 22),
        (2, 10),
        (1, 29),
        (2, 17), // 1941-1950
        (2, 6),
        (1, 27),
        (2, 14),
        (2, 3),
        (1, 24),
        (2, 12),
        (1, 31),
        (2, 18),
        (2, 8),
        (1, 28), // 1951-1960
        (2, 15),
        (2, 5),
        (1, 25),
        (2, 13),
        (2, 2),
        (1, 21),
        (2, 9),
        (1, 30),
        (2, 17),
        (2, 6), // 1961-1970
        (1, 27),
        (2, 15),
        (2, 3),
        (1, 23),
        (2, 11),
        (1, 31),
        (2, 18),
        (2, 7),
        (1, 28),
        (2, 16), // 1971-1980
        (2, 5),
        (1, 25),
        (2, 13),
        (2, 2),
        (2, 20),
        (2, 9),
        (1, 29),
        (2, 17),
        (2, 6),
        (1, 27), // 1981-1990
        (2, 15),
        (2, 4),
        (1, 23),
        (2, 10),
        (1, 31),
        (2, 19),
        (2, 7),
        (1, 28),
        (2, 16),
        (2, 5), // 1991-2000
        (1, 24),
        (2, 12),
        (2, 1),
        (1, 22),
        (2, 9),
        (1, 29),
        (2, 18),
        (2, 7),
        (1, 26),
        (2, 14), // 2001-2010
        (2, 3),
        (1, 23),
        (2, 10),
        (1, 31),
        (2, 19),
        (2, 8),
        (1, 28),
        (2, 16),
        (2, 5),
        (1, 25), // 2011-2020
        (2, 12),
        (2, 1),
        (1, 22),
        (2, 10),
        (1, 29),
        (2, 17),
        (2, 6),
        (1, 26),
        (2, 13),
        (2, 3), // 2021-2030
        (1, 23),
        (2, 11),
        (1, 31),
        (2, 19),
        (2, 8),
        (1, 28),
        (2, 15),
        (2, 4),
        (1, 24),
        (2, 12), // 2031-2040
        (2, 1),
        (1, 22),
        (2, 10),
        (1, 30),
        (2, 17),
        (2, 6),
        (1, 26),
        (2, 14),
        (2, 2),
        (1, 23), // 2041-2050
        (2, 11),
        (2, 1),
        (2, 19),
        (2, 8),
        (1, 28),
        (2, 15),
        (2, 4),
        (1, 24),
        (2, 12),
        (2, 2), // 2051-2060
        (1, 21),
        (2, 9),
        (1, 29),
        (2, 17),
        (2, 5),
        (1, 26),
        (2, 14),
        (2, 3),
        (1, 23),
        (2, 11), // 2061-2070
        (1, 31),
        (2, 19),
        (2, 7),
        (1, 27),
        (2, 15),
        (2, 5),
        (1, 24),
        (2, 12),
        (2, 2),
        (1, 22), // 2071-2080
        (2, 9),
        (1, 29),
        (2, 17),
        (2, 6),
        (1, 26),
        (2, 14),
        (2, 3),
        (1, 24),
        (2, 10),
        (1, 30), // 2081-2090
        (2, 18),
        (2, 7),
        (1, 27),
        (2, 15),
        (2, 5),
        (1, 25),
        (2, 12),
        (2, 1),
        (1, 21),
        (2, 9), // 2091-2100
    ];

    #[test]
    fn spring_festivals_match_an_independent_table() {
        for (index, &(month, day)) in SPRING_FESTIVALS.iter().enumerate() {
            let year = 1901 + index as i32;
            assert_eq!(from_solar(i64::from(year), month, day), lunar(year, 1, 1, false), "{year}");
            let eve = calendar::days_from_civil(i64::from(year), month, day) - 1;
            let previous = from_days(eve).map(|date| (date.year, date.month, date.is_leap_month));
            assert_eq!(previous, Some((year - 1, 12, false)), "{year}");
        }
    }

    #[test]
    fn days_walk_through_every_month_in_order() {
        let mut previous = from_solar(1900, 1, 31).expect("table start");
        let mut days = calendar::days_from_civil(1900, 2, 1);
        while let Some(date) = from_days(days) {
            if date.day == 1 {
                let same_year_next = date.year == previous.year
                    && ((date.month == previous.month && date.is_leap_month && !previous.is_leap_month)
                        || (date.month == previous.month + 1 && !date.is_leap_month));
                let next_year = date.year == previous.year + 1 && date.month == 1 && !date.is_leap_month;
                assert!(same_year_next || next_year, "{previous:?} -> {date:?}");
                assert!(previous.day == 29 || previous.day == 30, "{previous:?}");
                if date.is_leap_month {
                    assert_eq!(leap_month(date.year), Some(date.month));
                }
            } else {
                assert_eq!(date.day, previous.day + 1);
                assert_eq!(
                    (date.year, date.month, date.is_leap_month),
                    (previous.year, previous.month, previous.is_leap_month)
                );
            }
            previous = date;
            days += 1;
        }
        assert_eq!(previous, LunarDate { year: LAST_YEAR, month: 12, day: 29, is_leap_month: false });
        assert_eq!(calendar::civil_from_days(days - 1), calendar::CivilDate { year: 2101, month: 1, day: 28 });
    }

    #[test]
    fn year_lengths_are_plausible() {
        for year in FIRST_YEAR..=LAST_YEAR {
            let length = year_days(year).expect("in table");
            match leap_month(year) {
                Some(_) => assert!((383..=385).contains(&length), "{year}: {length}"),
                None => assert!((353..=355).contains(&length), "{year}: {length}"),
            }
        }
        assert_eq!(year_days(FIRST_YEAR - 1), None);
        assert_eq!(year_days(LAST_YEAR + 1), None);
        assert_eq!(month_days(2024, 0), None);
        assert_eq!(month_days(2024, 13), None);
    }

    #[test]
    fn names() {
        let date = from_solar(2024, 2, 10).expect("in range");
        assert_eq!(date.to_chinese(), "甲辰年（龙年）正月初一");
        assert_eq!(date.zodiac_en(), "Dragon");
        let date = from_solar(2023, 4, 10).expect("in range");
        assert_eq!(date.to_chinese(), "癸卯年（兔年）闰二月二十");
        let date = from_solar(2026, 8, 21).expect("in range");
        assert_eq!(date.to_chinese(), "丙午年（马年）七月初九");
        let names: Vec<String> = [1, 10, 11, 19, 20, 21, 29, 30]
            .iter()
            .map(|&day| LunarDate { year: 2024, month: 11, day, is_leap_month: false }.day_name())
            .collect();
        assert_eq!(names, ["初一", "初十", "十一", "十九", "二十", "廿一", "廿九", "三十"]);
        assert_eq!(LunarDate { year: 2024, month: 12, day: 8, is_leap_month: false }.month_name(), "腊月");
        assert_eq!(LunarDate { year: 1984, month: 1, day: 1, is_leap_month: false }.ganzhi_year(), "甲子");
    }
}
