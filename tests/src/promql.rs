//! Just enough PromQL reading to find the series an expression reads: the
//! vector selectors (`name{labels}`), without functions, aggregations,
//! label lists (`by (...)`), range durations, numbers or strings. The live
//! Prometheus check queries each selector on its own, so that a misspelt
//! metric or label value is caught even where the whole expression hides it
//! (`a > 0` is empty when all is well; `a or b` shows `a` when `b` is a
//! typo).

/// Aggregation operators and keywords: never a metric name.
const KEYWORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "atan2",
    "Inf",
    "NaN",
    "inf",
    "nan",
];

/// Keywords followed by a parenthesised list of label names.
const LABEL_LISTS: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];

/// The vector selectors of `expr`, in order, each as written (`name`,
/// `name{...}` or `{...}`), range brackets left out.
pub fn selectors(expr: &str) -> Vec<String> {
    let b = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'"' || c == b'\'' || c == b'`' {
            i = skip_string(b, i);
        } else if c == b'[' {
            // A range or subquery duration.
            i = b[i..].iter().position(|&x| x == b']').map_or(b.len(), |p| i + p + 1);
        } else if c == b'#' {
            // A comment runs to the end of the line.
            i = b[i..].iter().position(|&x| x == b'\n').map_or(b.len(), |p| i + p);
        } else if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            // A number or a duration (5m, 1e-3, 0x1f).
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                i += 1;
            }
            if i < b.len() && (b[i] == b'-' || b[i] == b'+') && b[i - 1].eq_ignore_ascii_case(&b'e') {
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
            }
        } else if c == b'{' {
            let end = skip_braces(b, i);
            out.push(expr[i..end].to_owned());
            i = end;
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b':' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
                i += 1;
            }
            let word = &expr[start..i];
            let next = skip_space(b, i);
            if LABEL_LISTS.contains(&word) {
                if b.get(next) == Some(&b'(') {
                    i = b[next..].iter().position(|&x| x == b')').map_or(b.len(), |p| next + p + 1);
                }
            } else if KEYWORDS.contains(&word) || b.get(next) == Some(&b'(') {
                // An aggregation, a keyword or a function call.
            } else if b.get(next) == Some(&b'{') {
                let end = skip_braces(b, next);
                out.push(format!("{word}{}", &expr[next..end]));
                i = end;
            } else {
                out.push(word.to_owned());
            }
        } else {
            i += 1;
        }
    }
    out
}

fn skip_space(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// The index after the string literal starting at `i`.
fn skip_string(b: &[u8], i: usize) -> usize {
    let quote = b[i];
    let mut j = i + 1;
    while j < b.len() {
        if b[j] == b'\\' && quote != b'`' {
            j += 2;
            continue;
        }
        if b[j] == quote {
            return j + 1;
        }
        j += 1;
    }
    b.len()
}

/// The index after the `{...}` block starting at `i` (strings inside may
/// hold braces).
fn skip_braces(b: &[u8], i: usize) -> usize {
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'"' | b'\'' | b'`' => j = skip_string(b, j),
            b'}' => return j + 1,
            _ => j += 1,
        }
    }
    b.len()
}

#[cfg(test)]
mod tests {
    use super::selectors;

    #[test]
    fn finds_the_series_and_nothing_else() {
        let e = r#"histogram_quantile(0.99, sum by (job, instance, le) (rate(healthgate_log_fsync_duration_seconds_bucket[5m]))) > 0.02"#;
        assert_eq!(selectors(e), ["healthgate_log_fsync_duration_seconds_bucket"]);
        let e = r#"(a:b:ratio_rate1h > (14.4 * 0.01) and c{le="0.005", x=~"y|}"}[1h] > 1e-3)
                   or on (instance) group_left (job) d offset 5m unless sum(e) without (f) > bool 2"#;
        assert_eq!(selectors(e), ["a:b:ratio_rate1h", r#"c{le="0.005", x=~"y|}"}"#, "d", "e"]);
        let e =
            r#"time() - max_over_time(healthgate_feed_last_batch_timestamp_seconds{job="healthgate"}[6h]) > 2 * 3600"#;
        assert_eq!(selectors(e), [r#"healthgate_feed_last_batch_timestamp_seconds{job="healthgate"}"#]);
        assert_eq!(selectors(r#"{__name__="up"} == 0"#), [r#"{__name__="up"}"#]);
        assert_eq!(selectors("vector(1) + count_values(\"v\", x)"), ["x"]);
    }
}
