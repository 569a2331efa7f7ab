//! The `get_weather` tool itself, independent of the WebAssembly bindings: its definition, the
//! configuration, the QWeather URLs, the parsing of QWeather's JSON answers and the summary
//! handed to the LLM. [`run`] drives a whole call through a caller-supplied HTTP function, so
//! the flow is tested natively with canned answers.

use serde_json::Value;

/// The tool's function name.
pub const NAME: &str = "get_weather";

/// The tool's description for the LLM.
pub const DESCRIPTION: &str = "获取某个地点的当前天气和未来7天天气预报。用户应提供一个位置，比如用户说“杭州天气”，参数为：杭州。\
如果用户说的是省份，默认用省会城市；如果用户说的不是省份或城市而是一个地名，默认用该地所在省份的省会城市。\
如果用户没有指明地点（“天气怎么样”“今天天气如何”），不要传 location 参数。\
Get the current weather and the 7-day forecast for a place; omit location when the user names none.";

/// JSON schema of the tool's arguments.
pub const PARAMETERS_JSON: &str = r#"{"type":"object","properties":{"location":{"type":"string","description":"地点名，例如杭州。可选参数，用户没有指明地点时不传。Place name, e.g. Hangzhou; omit it when the user names no place."},"lang":{"type":"string","description":"用户使用的语言代码，例如 zh_CN、zh_HK、en_US、ja_JP，默认 zh_CN。The user's language code."}},"required":[]}"#;

/// The configuration keys the extension reads (declared in its manifest).
pub const CONFIG_KEYS: [&str; 3] = ["api_host", "api_key", "default_location"];

/// The QWeather host used when `api_host` is not configured (the legacy free-tier host).
pub const DEFAULT_API_HOST: &str = "devapi.qweather.com";
/// The QWeather city-lookup host that goes with the legacy `devapi`/`api` weather hosts.
pub const LEGACY_GEO_HOST: &str = "geoapi.qweather.com";
/// The place used when neither the arguments nor the configuration give one.
pub const DEFAULT_LOCATION: &str = "广州";
/// Timeout of each HTTP request, in milliseconds (a call makes three).
pub const REQUEST_TIMEOUT_MS: u32 = 4000;
/// The largest accepted answer after gzip inflation, in bytes.
pub const MAX_BODY_BYTES: usize = 512 * 1024;
/// The longest accepted location, in characters.
pub const MAX_LOCATION_CHARS: usize = 64;
/// How many forecast days the summary lists.
pub const FORECAST_DAYS: usize = 7;

/// The extension's configuration, read from the host's `config` interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The QWeather API host, without scheme or path (for example `abc123.re.qweatherapi.com`).
    pub api_host: String,
    /// The QWeather API key, sent in the `X-QW-Api-Key` header.
    pub api_key: String,
    /// The place used when the arguments name none.
    pub default_location: String,
}

impl Config {
    /// Reads the configuration through `get` (the host's `config::get`). `api_host` may be given
    /// with a scheme or a trailing slash; both are removed.
    ///
    /// # Errors
    /// A message when `api_key` is missing or `api_host` is not a plain host name.
    pub fn load(get: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let non_empty = |key: &str| get(key).map(|value| value.trim().to_owned()).filter(|value| !value.is_empty());
        let api_key = non_empty("api_key").ok_or("the operator has not configured get_weather's api_key")?;
        let raw_host = non_empty("api_host").unwrap_or_else(|| DEFAULT_API_HOST.to_owned());
        let host = raw_host.trim_start_matches("https://").trim_start_matches("http://").trim_end_matches('/');
        let valid = !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'));
        if !valid {
            return Err(format!("get_weather's api_host {raw_host:?} is not a host name"));
        }
        Ok(Config {
            api_host: host.to_ascii_lowercase(),
            api_key,
            default_location: non_empty("default_location").unwrap_or_else(|| DEFAULT_LOCATION.to_owned()),
        })
    }

    /// The URL prefix of the city lookup: personal API hosts serve it under `/geo/v2`, the legacy
    /// `devapi.qweather.com` / `api.qweather.com` hosts pair with `geoapi.qweather.com/v2`.
    pub fn geo_base(&self) -> String {
        if self.api_host == "devapi.qweather.com" || self.api_host == "api.qweather.com" {
            format!("https://{LEGACY_GEO_HOST}/v2")
        } else {
            format!("https://{}/geo/v2", self.api_host)
        }
    }
}

/// The arguments of a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arguments {
    /// The place asked for, if any.
    pub location: Option<String>,
    /// The `lang` argument, if any.
    pub lang: Option<String>,
}

/// Reads an optional, non-blank string field.
fn optional_string(object: &serde_json::Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.trim().to_owned()).filter(|text| !text.is_empty())),
        Some(other) => Err(format!("{key} must be a string, got {other}")),
    }
}

/// Parses the arguments JSON; an empty text or `null` means no arguments.
///
/// # Errors
/// A message when the text is not a JSON object, a field is not a string or the location is
/// longer than [`MAX_LOCATION_CHARS`].
pub fn parse_arguments(arguments_json: &str) -> Result<Arguments, String> {
    if arguments_json.trim().is_empty() {
        return Ok(Arguments { location: None, lang: None });
    }
    let value: Value =
        serde_json::from_str(arguments_json).map_err(|error| format!("arguments are not valid JSON: {error}"))?;
    let object = match value {
        Value::Null => return Ok(Arguments { location: None, lang: None }),
        Value::Object(object) => object,
        _ => return Err("arguments must be a JSON object".to_owned()),
    };
    let location = optional_string(&object, "location")?;
    if location.as_ref().is_some_and(|location| location.chars().count() > MAX_LOCATION_CHARS) {
        return Err(format!("location is longer than {MAX_LOCATION_CHARS} characters"));
    }
    Ok(Arguments { location, lang: optional_string(&object, "lang")? })
}

/// The QWeather `lang` parameter for a language code such as `zh_CN`, `zh-HK`, `en_US`, `ja`
/// or `English`: `zh-hant` for traditional Chinese, else the primary subtag in lower case;
/// `zh` when nothing usable is given.
pub fn qweather_lang(code: &str) -> String {
    let lower = code.trim().to_ascii_lowercase().replace('_', "-");
    let mut parts = lower.split('-');
    let primary = parts.next().unwrap_or_default();
    let rest: Vec<&str> = parts.collect();
    match primary {
        "chinese" | "中文" => return "zh".to_owned(),
        "english" => return "en".to_owned(),
        _ => {}
    }
    if primary == "zh" && rest.iter().any(|part| matches!(*part, "hk" | "tw" | "mo" | "hant")) {
        return "zh-hant".to_owned();
    }
    if (2..=3).contains(&primary.len()) && primary.chars().all(|c| c.is_ascii_lowercase()) {
        primary.to_owned()
    } else {
        "zh".to_owned()
    }
}

/// Percent-encodes `text` for a URL query value (UTF-8, RFC 3986 unreserved characters kept).
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The city-lookup URL for `location`.
pub fn lookup_url(config: &Config, location: &str, lang: &str) -> String {
    format!(
        "{}/city/lookup?location={}&number=1&lang={}",
        config.geo_base(),
        percent_encode(location),
        percent_encode(lang)
    )
}

/// The URL of the current weather at the QWeather location id `id`.
pub fn now_url(config: &Config, id: &str, lang: &str) -> String {
    format!("https://{}/v7/weather/now?location={}&lang={}", config.api_host, percent_encode(id), percent_encode(lang))
}

/// The URL of the 7-day forecast at the QWeather location id `id`.
pub fn forecast_url(config: &Config, id: &str, lang: &str) -> String {
    format!("https://{}/v7/weather/7d?location={}&lang={}", config.api_host, percent_encode(id), percent_encode(lang))
}

/// A field as text: QWeather sends numbers as strings, but numbers are accepted too. Blank
/// strings count as missing.
fn text(value: &Value, key: &str) -> Option<String> {
    match value.get(key)? {
        Value::String(text) if !text.trim().is_empty() => Some(text.trim().to_owned()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

/// The meaning of a QWeather status code other than 200/204/404.
fn code_meaning(code: &str) -> &'static str {
    match code {
        "400" => "bad request",
        "401" => "authentication failed (check api_key and api_host)",
        "402" => "quota exceeded or account balance exhausted",
        "403" => "access denied",
        "429" => "too many requests",
        "500" => "QWeather server error",
        _ => "unexpected answer",
    }
}

/// Parses an answer body as a JSON object and checks QWeather's `code`: `Ok(Some(object))`
/// for `200`, `Ok(None)` for "no data" (`204`, `404`).
///
/// # Errors
/// A message for invalid JSON, any other code or an API v2 `error` object.
fn checked(body: &str) -> Result<Option<Value>, String> {
    let value: Value =
        serde_json::from_str(body).map_err(|error| format!("QWeather answered invalid JSON: {error}"))?;
    if let Some(error) = value.get("error") {
        let title = text(error, "title").unwrap_or_default();
        let detail = text(error, "detail").unwrap_or_default();
        return Err(format!("QWeather error: {title} {detail}").trim_end().to_owned());
    }
    match text(&value, "code").as_deref() {
        Some("200") => Ok(Some(value)),
        Some("204" | "404") => Ok(None),
        Some(code) => Err(format!("QWeather answered code {code}: {}", code_meaning(code))),
        None => Err("QWeather's answer has no code".to_owned()),
    }
}

/// A place found by the city lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct City {
    /// QWeather's location id.
    pub id: String,
    /// The place's name.
    pub name: String,
    /// The first-level administrative area (province).
    pub adm1: String,
    /// The second-level administrative area (city).
    pub adm2: String,
    /// The country.
    pub country: String,
}

impl City {
    /// The place's full name, from the largest area down, without repetitions
    /// (`浙江省 杭州`, not `浙江省 杭州 杭州`).
    pub fn full_name(&self) -> String {
        let mut parts: Vec<&str> = Vec::new();
        for part in [self.adm1.as_str(), self.adm2.as_str(), self.name.as_str()] {
            if !part.is_empty() && !parts.contains(&part) {
                parts.push(part);
            }
        }
        parts.join(" ")
    }
}

/// Parses the city-lookup answer; `Ok(None)` when no place matched.
///
/// # Errors
/// A message when the answer is an error or malformed.
pub fn parse_lookup(body: &str) -> Result<Option<City>, String> {
    let Some(value) = checked(body)? else { return Ok(None) };
    let Some(first) = value.get("location").and_then(Value::as_array).and_then(|places| places.first()) else {
        return Ok(None);
    };
    let id = text(first, "id").ok_or("QWeather's city lookup has no location id")?;
    Ok(Some(City {
        id,
        name: text(first, "name").unwrap_or_default(),
        adm1: text(first, "adm1").unwrap_or_default(),
        adm2: text(first, "adm2").unwrap_or_default(),
        country: text(first, "country").unwrap_or_default(),
    }))
}

/// The current weather.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Now {
    /// Weather text, e.g. `多云`.
    pub text: Option<String>,
    /// Temperature in °C.
    pub temp: Option<String>,
    /// Felt temperature in °C.
    pub feels_like: Option<String>,
    /// Wind direction.
    pub wind_dir: Option<String>,
    /// Wind force on the Beaufort scale.
    pub wind_scale: Option<String>,
    /// Relative humidity in percent.
    pub humidity: Option<String>,
    /// Precipitation of the last hour in mm.
    pub precip: Option<String>,
    /// Visibility in km.
    pub vis: Option<String>,
}

/// Parses the current-weather answer; `Ok(None)` when QWeather has no data.
///
/// # Errors
/// A message when the answer is an error or has no `now` object.
pub fn parse_now(body: &str) -> Result<Option<Now>, String> {
    let Some(value) = checked(body)? else { return Ok(None) };
    let now = value.get("now").filter(|now| now.is_object()).ok_or("QWeather's answer has no current weather")?;
    Ok(Some(Now {
        text: text(now, "text"),
        temp: text(now, "temp"),
        feels_like: text(now, "feelsLike"),
        wind_dir: text(now, "windDir"),
        wind_scale: text(now, "windScale"),
        humidity: text(now, "humidity"),
        precip: text(now, "precip"),
        vis: text(now, "vis"),
    }))
}

/// One forecast day.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Day {
    /// The date, `YYYY-MM-DD`.
    pub date: String,
    /// Daytime weather text.
    pub text_day: Option<String>,
    /// Night-time weather text.
    pub text_night: Option<String>,
    /// Lowest temperature in °C.
    pub temp_min: Option<String>,
    /// Highest temperature in °C.
    pub temp_max: Option<String>,
    /// Daytime wind direction.
    pub wind_dir: Option<String>,
    /// Daytime wind force on the Beaufort scale.
    pub wind_scale: Option<String>,
}

/// Parses the forecast answer into at most [`FORECAST_DAYS`] days (days without a date are
/// skipped); an empty list when QWeather has no data.
///
/// # Errors
/// A message when the answer is an error.
pub fn parse_forecast(body: &str) -> Result<Vec<Day>, String> {
    let Some(value) = checked(body)? else { return Ok(Vec::new()) };
    let days = value.get("daily").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    Ok(days
        .iter()
        .filter_map(|day| {
            Some(Day {
                date: text(day, "fxDate")?,
                text_day: text(day, "textDay"),
                text_night: text(day, "textNight"),
                temp_min: text(day, "tempMin"),
                temp_max: text(day, "tempMax"),
                wind_dir: text(day, "windDirDay"),
                wind_scale: text(day, "windScaleDay"),
            })
        })
        .take(FORECAST_DAYS)
        .collect())
}

/// Whether a precipitation value means "none".
fn is_zero(value: &str) -> bool {
    value.parse::<f64>().is_ok_and(|number| number == 0.0)
}

/// The weather summary handed to the LLM (`req-llm`), in English when `lang` is `en`, else in
/// Chinese (QWeather already localises the weather texts through its `lang` parameter).
pub fn summary(city: &City, now: Option<&Now>, days: &[Day], lang: &str) -> String {
    let english = lang == "en";
    let mut out = if english {
        format!("Location: {}\n", city.full_name())
    } else {
        format!("您查询的位置是：{}\n", city.full_name())
    };
    if let Some(now) = now {
        let mut parts: Vec<String> = Vec::new();
        if let Some(text) = &now.text {
            parts.push(text.clone());
        }
        let (temp, feels, humidity, precip, vis) = if english {
            ("temperature", "feels like", "humidity", "precipitation", "visibility")
        } else {
            ("气温", "体感温度", "相对湿度", "降水量", "能见度")
        };
        if let Some(value) = &now.temp {
            parts.push(format!("{temp} {value}℃"));
        }
        if let Some(value) = &now.feels_like {
            parts.push(format!("{feels} {value}℃"));
        }
        match (&now.wind_dir, &now.wind_scale) {
            (Some(dir), Some(scale)) if english => parts.push(format!("{dir} wind force {scale}")),
            (Some(dir), Some(scale)) => parts.push(format!("{dir} {scale}级")),
            (Some(dir), None) => parts.push(dir.clone()),
            _ => {}
        }
        if let Some(value) = &now.humidity {
            parts.push(format!("{humidity} {value}%"));
        }
        if let Some(value) = now.precip.as_deref().filter(|value| !is_zero(value)) {
            parts.push(if english { format!("{precip} {value} mm") } else { format!("{precip} {value} 毫米") });
        }
        if let Some(value) = &now.vis {
            parts.push(if english { format!("{vis} {value} km") } else { format!("{vis} {value} 公里") });
        }
        let separator = if english { ", " } else { "，" };
        out.push_str(if english { "Current weather: " } else { "当前天气：" });
        out.push_str(&parts.join(separator));
        out.push('\n');
    }
    if !days.is_empty() {
        out.push_str(if english { "Forecast:\n" } else { "未来几天预报：\n" });
        for (index, day) in days.iter().enumerate() {
            let today = match (index, english) {
                (0, true) => " (today)",
                (0, false) => "（今天）",
                _ => "",
            };
            let weather = match (&day.text_day, &day.text_night) {
                (Some(d), Some(n)) if d != n && english => format!("{d} by day, {n} at night"),
                (Some(d), Some(n)) if d != n => format!("白天{d}，夜间{n}"),
                (Some(d), _) => d.clone(),
                (None, Some(n)) => n.clone(),
                (None, None) => String::new(),
            };
            let temps = match (&day.temp_min, &day.temp_max) {
                (Some(min), Some(max)) if english => format!(", {min} to {max}℃"),
                (Some(min), Some(max)) => format!("，气温 {min}~{max}℃"),
                _ => String::new(),
            };
            let wind = match (&day.wind_dir, &day.wind_scale) {
                (Some(dir), Some(scale)) if english => format!(", {dir} wind force {scale}"),
                (Some(dir), Some(scale)) => format!("，{dir} {scale}级"),
                _ => String::new(),
            };
            let colon = if english { ": " } else { "：" };
            out.push_str(&format!("{}{today}{colon}{weather}{temps}{wind}\n", day.date));
        }
    }
    out.push_str(if english {
        "(Answer only what the user asked: report today's weather unless they asked about other days; do not read out every number.)"
    } else {
        "（请只回答用户关心的内容：用户没有指定日期时只报告今天的天气，除非用户要求了解多日天气；不要逐条朗读全部数据。）"
    });
    out
}

/// An HTTP GET request for the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The absolute URL.
    pub url: String,
    /// The request headers.
    pub headers: Vec<(String, String)>,
}

/// An HTTP answer from the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The body, plain or gzip.
    pub body: Vec<u8>,
}

/// Why [`run`] failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error<E> {
    /// The arguments were malformed.
    InvalidArguments(String),
    /// The weather service answered with an error or with something unreadable.
    Service(String),
    /// The host could not carry out a request.
    Transport(E),
}

/// Sends one GET through `fetch` and returns the body text of a 2xx answer.
fn get<E>(
    fetch: &mut impl FnMut(&Request) -> Result<Reply, E>,
    config: &Config,
    url: String,
) -> Result<String, Error<E>> {
    let headers = vec![
        ("X-QW-Api-Key".to_owned(), config.api_key.clone()),
        ("Accept".to_owned(), "application/json".to_owned()),
        ("Accept-Encoding".to_owned(), "gzip".to_owned()),
    ];
    let reply = fetch(&Request { url, headers }).map_err(Error::Transport)?;
    let body = crate::gzip::body_text(&reply.body, MAX_BODY_BYTES).map_err(Error::Service)?;
    if (200..300).contains(&reply.status) {
        return Ok(body);
    }
    // API v2 errors come with an HTTP error status and an `error` object in the body.
    match checked(&body) {
        Err(message) => Err(Error::Service(format!("HTTP {}: {message}", reply.status))),
        Ok(_) => Err(Error::Service(format!("QWeather answered HTTP {}", reply.status))),
    }
}

/// Runs a whole `get_weather` call: parses the arguments, looks the place up, fetches the
/// current weather and the forecast through `fetch` and returns the summary for the LLM. A
/// place QWeather does not know gives a text saying so (as the Python plugin does), not an
/// error.
///
/// # Errors
/// [`Error::InvalidArguments`] for bad arguments, [`Error::Transport`] when `fetch` fails and
/// [`Error::Service`] when QWeather answers with an error.
pub fn run<E>(
    arguments_json: &str,
    context_language: &str,
    config: &Config,
    mut fetch: impl FnMut(&Request) -> Result<Reply, E>,
) -> Result<String, Error<E>> {
    let arguments = parse_arguments(arguments_json).map_err(Error::InvalidArguments)?;
    let lang = qweather_lang(arguments.lang.as_deref().unwrap_or(context_language));
    let location = arguments.location.unwrap_or_else(|| config.default_location.clone());
    let lookup = get(&mut fetch, config, lookup_url(config, &location, &lang))?;
    let Some(city) = parse_lookup(&lookup).map_err(Error::Service)? else {
        return Ok(if lang == "en" {
            format!("No place called {location} was found; ask the user to check the location.")
        } else {
            format!("未找到相关的城市：{location}，请确认地点是否正确。")
        });
    };
    let now_body = get(&mut fetch, config, now_url(config, &city.id, &lang))?;
    let now = parse_now(&now_body).map_err(Error::Service)?;
    let forecast_body = get(&mut fetch, config, forecast_url(config, &city.id, &lang))?;
    let days = parse_forecast(&forecast_body).map_err(Error::Service)?;
    if now.is_none() && days.is_empty() {
        return Err(Error::Service(format!("QWeather has no weather data for {}", city.full_name())));
    }
    Ok(summary(&city, now.as_ref(), &days, &lang))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(host: &str) -> Config {
        let host = host.to_owned();
        Config::load(move |key| match key {
            "api_key" => Some(" secret ".to_owned()),
            "api_host" => Some(host.clone()),
            _ => None,
        })
        .expect("valid config")
    }

    const LOOKUP: &str = r#"{"code":"200","location":[{"name":"杭州","id":"101210101","lat":"30.28","lon":"120.15","adm2":"杭州","adm1":"浙江省","country":"中国","fxLink":"https://www.qweather.com/weather/hangzhou-101210101.html"}],"refer":{}}"#;
    const NOW: &str = r#"{"code":"200","updateTime":"2026-11-26T10:00+08:00","now":{"obsTime":"2026-11-26T09:50+08:00","temp":"14","feelsLike":"12","icon":"101","text":"多云","wind360":"45","windDir":"东北风","windScale":"3","windSpeed":"12","humidity":"72","precip":"0.0","pressure":"1021","vis":"16","cloud":"91","dew":"9"}}"#;
    const FORECAST: &str = r#"{"code":"200","daily":[{"fxDate":"2026-11-26","tempMax":"17","tempMin":"9","textDay":"多云","textNight":"晴","windDirDay":"东北风","windScaleDay":"1-3"},{"fxDate":"2026-11-27","tempMax":18,"tempMin":10,"textDay":"小雨","textNight":"小雨","windDirDay":"东风","windScaleDay":"3-4"},{"tempMax":"1"}]}"#;

    #[test]
    fn schema_is_valid_json() {
        let schema: Value = serde_json::from_str(PARAMETERS_JSON).expect("schema parses");
        assert_eq!(schema["properties"]["location"]["type"], "string");
        assert_eq!(schema["properties"]["lang"]["type"], "string");
        assert_eq!(schema["required"], serde_json::json!([]));
    }

    #[test]
    fn config_defaults_and_validation() {
        let defaults = Config::load(|key| (key == "api_key").then(|| "k".to_owned())).expect("valid");
        assert_eq!(defaults.api_host, DEFAULT_API_HOST);
        assert_eq!(defaults.default_location, DEFAULT_LOCATION);
        assert_eq!(defaults.geo_base(), "https://geoapi.qweather.com/v2");
        assert!(Config::load(|_| None).is_err());
        assert!(Config::load(|key| Some(if key == "api_host" { "bad host/x?y" } else { "k" }.to_owned())).is_err());
        let personal = config("https://ABC123.re.qweatherapi.com/");
        assert_eq!(personal.api_host, "abc123.re.qweatherapi.com");
        assert_eq!(personal.api_key, "secret");
        assert_eq!(personal.geo_base(), "https://abc123.re.qweatherapi.com/geo/v2");
    }

    #[test]
    fn builds_urls() {
        let personal = config("abc.re.qweatherapi.com");
        assert_eq!(
            lookup_url(&personal, "杭州 西湖&x", "zh"),
            "https://abc.re.qweatherapi.com/geo/v2/city/lookup?location=%E6%9D%AD%E5%B7%9E%20%E8%A5%BF%E6%B9%96%26x&number=1&lang=zh"
        );
        assert_eq!(
            now_url(&personal, "101210101", "zh-hant"),
            "https://abc.re.qweatherapi.com/v7/weather/now?location=101210101&lang=zh-hant"
        );
        assert_eq!(
            forecast_url(&config("devapi.qweather.com"), "101210101", "en"),
            "https://devapi.qweather.com/v7/weather/7d?location=101210101&lang=en"
        );
        assert_eq!(
            lookup_url(&config("devapi.qweather.com"), "Paris", "en"),
            "https://geoapi.qweather.com/v2/city/lookup?location=Paris&number=1&lang=en"
        );
    }

    #[test]
    fn maps_languages() {
        for (code, lang) in [
            ("zh_CN", "zh"),
            ("zh-HK", "zh-hant"),
            ("zh_TW", "zh-hant"),
            ("zh-Hant-MO", "zh-hant"),
            ("en_US", "en"),
            ("English", "en"),
            ("ja_JP", "ja"),
            ("", "zh"),
            ("中文", "zh"),
            ("1234", "zh"),
        ] {
            assert_eq!(qweather_lang(code), lang, "{code}");
        }
    }

    #[test]
    fn parses_arguments() {
        assert_eq!(parse_arguments(""), Ok(Arguments { location: None, lang: None }));
        assert_eq!(
            parse_arguments(r#"{"location":" 杭州 ","lang":"zh_CN"}"#),
            Ok(Arguments { location: Some("杭州".to_owned()), lang: Some("zh_CN".to_owned()) })
        );
        assert_eq!(parse_arguments(r#"{"location":""}"#), Ok(Arguments { location: None, lang: None }));
        assert!(parse_arguments(r#"{"location":1}"#).is_err());
        assert!(parse_arguments("[]").is_err());
        assert!(parse_arguments(&serde_json::json!({"location": "x".repeat(65)}).to_string()).is_err());
    }

    #[test]
    fn parses_answers() {
        let city = parse_lookup(LOOKUP).expect("valid").expect("found");
        assert_eq!(city.id, "101210101");
        assert_eq!(city.full_name(), "浙江省 杭州");
        assert_eq!(parse_lookup(r#"{"code":"404"}"#), Ok(None));
        assert_eq!(parse_lookup(r#"{"code":"200","location":[]}"#), Ok(None));
        assert!(parse_lookup(r#"{"code":"401"}"#).expect_err("an error").contains("authentication"));
        assert!(parse_lookup(r#"{"error":{"status":403,"title":"Forbidden","detail":"no access"}}"#).is_err());
        assert!(parse_lookup("<html>").is_err());
        let now = parse_now(NOW).expect("valid").expect("data");
        assert_eq!(now.text.as_deref(), Some("多云"));
        assert_eq!(now.feels_like.as_deref(), Some("12"));
        assert!(parse_now(r#"{"code":"200"}"#).is_err());
        let days = parse_forecast(FORECAST).expect("valid");
        assert_eq!(days.len(), 2, "the day without a date is skipped");
        assert_eq!(days[1].temp_max.as_deref(), Some("18"));
    }

    #[test]
    fn summarises_in_chinese_and_english() {
        let city = parse_lookup(LOOKUP).expect("valid").expect("found");
        let now = parse_now(NOW).expect("valid");
        let days = parse_forecast(FORECAST).expect("valid");
        let chinese = summary(&city, now.as_ref(), &days, "zh");
        assert!(chinese.starts_with("您查询的位置是：浙江省 杭州\n当前天气：多云，气温 14℃，体感温度 12℃，东北风 3级，相对湿度 72%，能见度 16 公里\n"));
        assert!(chinese.contains("2026-11-26（今天）：白天多云，夜间晴，气温 9~17℃，东北风 1-3级\n"));
        assert!(chinese.contains("2026-11-27：小雨，气温 10~18℃，东风 3-4级\n"));
        assert!(!chinese.contains("降水量"), "zero precipitation is left out");
        let english = summary(&city, None, &days, "en");
        assert!(
            english.starts_with(
                "Location: 浙江省 杭州\nForecast:\n2026-11-26 (today): 多云 by day, 晴 at night, 9 to 17℃"
            )
        );
    }

    #[test]
    fn runs_a_whole_call() {
        let settings = config("abc.re.qweatherapi.com");
        let mut seen = Vec::new();
        let result = run::<String>(r#"{"location":"杭州"}"#, "zh-CN", &settings, |request| {
            seen.push(request.url.clone());
            assert!(request.headers.contains(&("X-QW-Api-Key".to_owned(), "secret".to_owned())));
            let body = if request.url.contains("/city/lookup") {
                LOOKUP
            } else if request.url.contains("/weather/now") {
                NOW
            } else {
                FORECAST
            };
            Ok(Reply { status: 200, body: body.as_bytes().to_vec() })
        })
        .expect("a summary");
        assert_eq!(seen.len(), 3);
        assert!(result.contains("当前天气：多云"));
    }

    #[test]
    fn uses_the_default_location_and_reports_unknown_places() {
        let settings = config("abc.re.qweatherapi.com");
        let mut urls = Vec::new();
        let result = run::<String>("{}", "en-US", &settings, |request| {
            urls.push(request.url.clone());
            Ok(Reply { status: 200, body: br#"{"code":"404"}"#.to_vec() })
        });
        assert_eq!(
            urls,
            ["https://abc.re.qweatherapi.com/geo/v2/city/lookup?location=%E5%B9%BF%E5%B7%9E&number=1&lang=en"]
        );
        assert_eq!(result, Ok("No place called 广州 was found; ask the user to check the location.".to_owned()));
    }

    #[test]
    fn reports_failures() {
        let settings = config("abc.re.qweatherapi.com");
        let transport = run(r#"{"location":"杭州"}"#, "zh", &settings, |_| Err("timed out"));
        assert_eq!(transport, Err(Error::Transport("timed out")));
        let status = run::<String>(r#"{"location":"杭州"}"#, "zh", &settings, |_| {
            Ok(Reply {
                status: 401,
                body: br#"{"error":{"status":401,"title":"Unauthorized","detail":"bad key"}}"#.to_vec(),
            })
        });
        assert_eq!(status, Err(Error::Service("HTTP 401: QWeather error: Unauthorized bad key".to_owned())));
        let html = run::<String>(r#"{"location":"杭州"}"#, "zh", &settings, |_| {
            Ok(Reply { status: 502, body: b"<html>".to_vec() })
        });
        assert!(matches!(html, Err(Error::Service(message)) if message.starts_with("HTTP 502")));
        assert!(matches!(run::<String>("[1]", "zh", &settings, |_| unreachable!()), Err(Error::InvalidArguments(_))));
    }
}
