//! Parsing the three history formats, and the errors for malformed input.
//!
//! Malformed input must come back as an error naming the line, never as a panic
//! or a silently wrong history; these tests pin that down for each format.

use seedkv_checker::{
    check_file, check_records, detect_format, parse_history, Error, Format, Model, Op, OpResult,
    ParseError, Verdict, JEPSEN_KEY,
};

fn line_of(err: ParseError) -> (usize, String) {
    match err {
        ParseError::Line { line, message } => (line, message),
        other => panic!("expected a line error, got {other:?}"),
    }
}

// ------------------------------------------------------------------ seedkv

const SEEDKV: &str = r#"# a comment
{"client":1,"call_ns":0,"return_ns":10,"op":{"type":"put","key":"a","value":"1"},"result":{"type":"put","revision":1}}

{"client":2,"call_ns":5,"return_ns":null,"op":{"type":"batch","ops":[{"type":"put","key":"a","value":"2"},{"type":"delete","key":"b"}]},"result":null}
{"client":3,"call_ns":20,"return_ns":30,"op":{"type":"get","key":"a"},"result":{"type":"get","value":"1","revision":1}}
"#;

#[test]
fn seedkv_lines_parse() {
    let (records, format) = parse_history(SEEDKV).expect("valid");
    assert_eq!(format, Format::Seedkv);
    assert_eq!(format.default_model(), Model::Kv);
    assert_eq!(records.len(), 3);
    assert_eq!(records[1].result, None);
    assert!(matches!(&records[1].op, Op::Batch { ops } if ops.len() == 2));
    let report = check_records(&records, Model::Kv).expect("valid");
    assert_eq!(report.verdict, Verdict::Linearizable);
    assert_eq!(report.partitions, 1);
}

#[test]
fn empty_text_is_an_empty_seedkv_history() {
    let (records, format) = parse_history("\n  \n").expect("empty is fine");
    assert!(records.is_empty());
    assert_eq!(format, Format::Seedkv);
}

#[test]
fn seedkv_malformed_json_names_the_line() {
    let text = format!("{SEEDKV}{{\"client\":1,\"call_ns\":0\n");
    let (line, message) = line_of(parse_history(&text).expect_err("broken"));
    assert_eq!(line, 6);
    assert!(message.contains("invalid seedkv record"), "{message}");
}

#[test]
fn seedkv_unknown_op_type_names_the_line() {
    let text =
        r#"{"client":1,"call_ns":0,"return_ns":1,"op":{"type":"incr","key":"a"},"result":null}"#;
    let (line, message) = line_of(parse_history(text).expect_err("unknown op"));
    assert_eq!(line, 1);
    assert!(message.contains("incr"), "{message}");
}

#[test]
fn seedkv_rule_violations_name_the_line() {
    let text = r#"
{"client":1,"call_ns":0,"return_ns":10,"op":{"type":"put","key":"a","value":"1"},"result":{"type":"get","value":null,"revision":0}}
"#;
    let (line, message) = line_of(parse_history(text).expect_err("mismatch"));
    assert_eq!(line, 2);
    assert!(message.contains("does not answer"), "{message}");
    let text = r#"{"client":1,"call_ns":9,"return_ns":3,"op":{"type":"delete","key":"a"},"result":{"type":"delete","revision":0}}"#;
    let (line, message) = line_of(parse_history(text).expect_err("time travel"));
    assert_eq!(line, 1);
    assert!(message.contains("before call_ns"), "{message}");
}

#[test]
fn unknown_format_is_an_error() {
    match parse_history("\nhello world\n") {
        Err(ParseError::UnknownFormat { line, snippet }) => {
            assert_eq!(line, 2);
            assert_eq!(snippet, "hello world");
        }
        other => panic!("expected UnknownFormat, got {other:?}"),
    }
}

// ------------------------------------------------------------------ jepsen

const JEPSEN: &str = "\
INFO  jepsen.core - setting up the register
INFO  jepsen.util - 0\t:invoke\t:write\t1
INFO  jepsen.util - 1\t:invoke\t:read\tnil
INFO  jepsen.util - 0\t:ok\t:write\t1
INFO  jepsen.util - 1\t:ok\t:read\t1
INFO  jepsen.util - 2\t:invoke\t:cas\t[1 2]
INFO  jepsen.util - 2\t:fail\t:cas\t[1 2]
INFO  jepsen.util - 3\t:invoke\t:read\tnil
INFO  jepsen.util - 3\t:fail\t:read\t:timed-out
INFO  jepsen.util - 4\t:invoke\t:write\t3
INFO  jepsen.util - 4\t:info\t:write\t:timed-out
INFO  jepsen.util - 5   :invoke :cas    [3 4]
";

#[test]
fn jepsen_log_parses_with_porcupine_semantics() {
    let (records, format) = parse_history(JEPSEN).expect("valid");
    assert_eq!(format, Format::JepsenEtcd);
    assert_eq!(format.default_model(), Model::Register);
    // The timed-out read is dropped.
    assert_eq!(records.len(), 5);
    assert_eq!(
        records[0].op,
        Op::Put {
            key: JEPSEN_KEY.into(),
            value: "1".into()
        }
    );
    assert_eq!((records[0].call_ns, records[0].return_ns), (2, Some(4)));
    assert_eq!(
        records[1].result,
        Some(OpResult::Get {
            value: Some("1".into()),
            revision: 0
        })
    );
    assert_eq!(
        records[2].result,
        Some(OpResult::Cas {
            succeeded: false,
            revision: 0
        })
    );
    // :info and never-completed invocations have unknown outcome.
    assert_eq!((records[3].return_ns, &records[3].result), (None, &None));
    assert_eq!(records[4].client, 5);
    assert_eq!(records[4].result, None);
    // cas [1 2] failed although the register held 1: not linearizable.
    let report = check_records(&records, Model::Register).expect("valid");
    assert_eq!(report.verdict, Verdict::NotLinearizable);
    assert_eq!(report.failing_partition.as_deref(), Some(JEPSEN_KEY));
}

#[test]
fn jepsen_errors_name_the_line() {
    let cases = [
        (
            "INFO  jepsen.util - 0\t:invoke\t:write\t1\nINFO  jepsen.util - 1\t:ok\t:write\t1\n",
            2,
            "no pending invocation",
        ),
        (
            "INFO  jepsen.util - 0\t:invoke\t:write\t1\nINFO  jepsen.util - 0\t:invoke\t:read\tnil\n",
            2,
            "still pending",
        ),
        (
            "INFO  jepsen.util - 0\t:invoke\t:cas\t[1]\n",
            1,
            "exactly two",
        ),
        (
            "INFO  jepsen.util - 0\t:invoke\t:cas\t1 2\n",
            1,
            "not [expected new]",
        ),
        (
            "INFO  jepsen.util - 0\t:invoke\t:write\t1\nINFO  jepsen.util - 0\t:ok\t:read\t1\n",
            2,
            "pending invocation (line 1) is :write",
        ),
        ("INFO  jepsen.util - 0\t:invoke\t:incr\t1\n", 1, "unknown operation"),
        ("INFO  jepsen.util - 0\t:done\t:write\t1\n", 1, "unknown event type"),
        ("INFO  jepsen.util - 0\t:invoke\n", 1, "without an operation"),
        ("INFO  jepsen.util - 0\t:invoke\t:write\n", 1, "without a value"),
    ];
    for (text, want_line, want) in cases {
        let (line, message) = line_of(parse_history(text).expect_err(text));
        assert_eq!(line, want_line, "{text}");
        assert!(message.contains(want), "{text}: {message}");
    }
}

// --------------------------------------------------------------- porcupine

const PORCUPINE: &str = r#"{:process 0, :type :invoke, :f :append, :key "k", :value "x 0 0 y"}
{:process 1, :type :invoke, :f :get, :key "k", :value nil}
{:process 1, :type :ok, :f :get, :key "k", :value ""}
{:process 0, :type :ok, :f :append, :key "k", :value "x 0 0 y"}
{:process 1, :type :invoke, :f :get, :key "k", :value nil}
{:process 1, :type :ok, :f :get, :key "k", :value "x 0 0 y"}
{:process 2, :type :invoke, :f :put, :key "j", :value ""}
{:process 2, :type :ok, :f :put, :key "j", :value ""}
{:process 2, :type :invoke, :f :append, :key "j", :value "ab"}
{:process 2, :type :ok, :f :append, :key "j", :value "ab"}
{:process 2, :type :invoke, :f :append, :key "j", :value "c"}
{:process 2, :type :ok, :f :append, :key "j", :value "c"}
{:process 2, :type :invoke, :f :get, :key "j", :value nil}
{:process 2, :type :ok, :f :get, :key "j", :value "abc"}
"#;

#[test]
fn porcupine_kv_parses_and_checks() {
    let (records, format) = parse_history(PORCUPINE).expect("valid");
    assert_eq!(format, Format::PorcupineKv);
    assert_eq!(format.default_model(), Model::Kv);
    assert_eq!(records.len(), 7);
    // An absent key reads as "", mapped to absent.
    assert_eq!(
        records[1].result,
        Some(OpResult::Get {
            value: None,
            revision: 0
        })
    );
    // A put of "" is a delete.
    assert_eq!(records[3].op, Op::Delete { key: "j".into() });
    assert!(matches!(records[3].result, Some(OpResult::Delete { .. })));
    let report = check_records(&records, Model::Kv).expect("valid");
    assert_eq!(report.verdict, Verdict::Linearizable);
    assert_eq!(report.partitions, 2);
    // Reading "abc" as "ab" is a stale read.
    let bad = PORCUPINE.replace(":value \"abc\"", ":value \"ab\"");
    let (records, _) = parse_history(&bad).expect("valid");
    let report = check_records(&records, Model::Kv).expect("valid");
    assert_eq!(report.verdict, Verdict::NotLinearizable);
    assert_eq!(report.failing_partition.as_deref(), Some("j"));
}

#[test]
fn porcupine_errors_name_the_line() {
    let good = r#"{:process 0, :type :invoke, :f :get, :key "k", :value nil}"#;
    let cases = [
        (
            r#"{:process 0, :type :invoke, :f :get, :value nil}"#,
            "missing :key",
        ),
        (
            r#"{:process 0, :type :invoke, :f :get, :key "k}"#,
            "unterminated string",
        ),
        (
            r#"{:process 0, :type :invoke, :f :get, :key "k""#,
            "missing closing",
        ),
        (
            r#"{:process -1, :type :invoke, :f :get, :key "k"}"#,
            ":process",
        ),
        (
            r#"{:process 0, :type invoke, :f :get, :key "k"}"#,
            "unsupported value",
        ),
        (
            r#"{:process 0, :type :invoke, :f :cas, :key "k"}"#,
            "unknown operation",
        ),
        (
            r#"{:process 0, :type :ok, :f :get, :key "k", :value 3}"#,
            ":value",
        ),
        (
            r#"{:process 0, :type :invoke, :f :get, :key "k"} trailing"#,
            "after the closing",
        ),
        (
            r#"{:process 7, :type :ok, :f :get, :key "k", :value nil}"#,
            "no pending",
        ),
    ];
    for (bad, want) in cases {
        let text = format!("{good}\n\n{bad}\n");
        let result = parse_history(&text);
        let (line, message) = line_of(result.expect_err(bad));
        assert_eq!(line, 3, "{bad}");
        assert!(message.contains(want), "{bad}: {message}");
    }
}

#[test]
fn detection_prefers_the_first_meaningful_line() {
    assert_eq!(
        detect_format(PORCUPINE).expect("ok"),
        Some(Format::PorcupineKv)
    );
    assert_eq!(detect_format(JEPSEN).expect("ok"), Some(Format::JepsenEtcd));
    assert_eq!(detect_format(SEEDKV).expect("ok"), Some(Format::Seedkv));
    assert_eq!(detect_format("").expect("ok"), None);
    // A Jepsen log whose noise includes an EDN map is still a Jepsen log.
    let noisy = format!("{{:nodes [n1 n2]}}\n{JEPSEN}");
    assert_eq!(detect_format(&noisy).expect("ok"), Some(Format::JepsenEtcd));
}

// ------------------------------------------------------------- check_file

#[test]
fn check_file_reports_io_and_parse_errors_with_the_path() {
    let dir = std::env::temp_dir().join(format!("seedkv-checker-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let missing = dir.join("missing.jsonl");
    match check_file(&missing, None) {
        Err(e @ Error::Io { .. }) => assert!(e.to_string().contains("missing.jsonl")),
        other => panic!("expected Io error, got {other:?}"),
    }
    let broken = dir.join("broken.jsonl");
    std::fs::write(&broken, "{\"client\": 1}\n").expect("write");
    match check_file(&broken, None) {
        Err(e @ Error::Parse { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("broken.jsonl") && text.contains("line 1"),
                "{text}"
            )
        }
        other => panic!("expected Parse error, got {other:?}"),
    }
    let good = dir.join("good.log");
    std::fs::write(&good, JEPSEN).expect("write");
    let report = check_file(&good, None).expect("checks");
    assert_eq!(report.verdict, Verdict::NotLinearizable);
    // The Kv model on the same file gives the same answer (no revisions in it).
    let report = check_file(&good, Some(Model::Kv)).expect("checks");
    assert_eq!(report.verdict, Verdict::NotLinearizable);
    std::fs::remove_dir_all(&dir).ok();
}

// ------------------------------------------------------------------- docs

/// The example in docs/HISTORY_FORMAT.md must parse and mean what the text says.
#[test]
fn documented_example_is_right() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/HISTORY_FORMAT.md");
    let doc = std::fs::read_to_string(&path).expect("docs/HISTORY_FORMAT.md exists");
    let start = doc.find("```json\n").expect("a json example") + "```json\n".len();
    let len = doc[start..].find("```").expect("closed example");
    let example = &doc[start..start + len];
    let (records, format) = parse_history(example).expect("example parses");
    assert_eq!(format, Format::Seedkv);
    assert_eq!(records.len(), 6);
    let report = check_records(&records, Model::Kv).expect("valid");
    assert_eq!(report.verdict, Verdict::Linearizable);
    let last = example.trim_end().rsplit('\n').next().expect("a last line");
    let torn = example.replace(
        last,
        &last.replace(
            r#""value":"2","revision":9"#,
            r#""value":null,"revision":0"#,
        ),
    );
    assert_ne!(torn, example);
    let (records, _) = parse_history(&torn).expect("parses");
    let report = check_records(&records, Model::Kv).expect("valid");
    assert_eq!(report.verdict, Verdict::NotLinearizable);
}
