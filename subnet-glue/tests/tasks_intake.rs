//! Task intake (SPEC §1–§2) on a real SQLite file in a tempdir: a good spec is stored with
//! its split and status history; bad specs (unknown field, out-of-range value, wrong type,
//! missing column, empty or tiny dataset, unknown architecture, a grpo task with an instruct mapping) are refused naming the
//! field, file or row, and leave nothing behind; the status machine refuses illegal moves.

mod tasks_support;

use std::path::Path;

use gradients_subnet::store::Store;
use gradients_subnet::task::{
    advance_to, create_task, get_task, list_tasks, load_split, make_split, set_status, task_events,
    TaskSpec, TaskStatus, TaskType,
};
use tasks_support::{save_tiny_model, spec_toml, write_dataset};

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn count_rows(store: &Store) -> (i64, i64, i64) {
    let q = |sql: &str| -> i64 { store.conn().query_row(sql, [], |r| r.get(0)).unwrap() };
    (
        q("SELECT COUNT(*) FROM tasks"),
        q("SELECT COUNT(*) FROM task_rows"),
        q("SELECT COUNT(*) FROM task_events"),
    )
}

#[test]
fn a_good_spec_is_stored_with_its_split_and_history() {
    let dir = tempfile::tempdir().unwrap();
    let model = save_tiny_model(dir.path());
    let data = write_dataset(dir.path(), 60);
    let spec_path = write(
        dir.path(),
        "task.toml",
        &spec_toml(
            Path::new("tiny-model"),
            Path::new("data.json"),
            "task_id = \"t1\"",
        ),
    );
    let spec = TaskSpec::from_file(&spec_path).unwrap();
    assert_eq!(
        spec.base_model, model,
        "relative paths resolve against the spec file"
    );
    let db = dir.path().join("state.db");
    let store = Store::open(&db).unwrap();
    let intake = create_task(&store, &spec).unwrap();
    assert_eq!(intake.task.status, TaskStatus::Ready);
    assert_eq!(intake.warnings.len(), 1, "a dataset under 2,000 rows warns");
    assert_eq!(intake.split, make_split(60, None, 42).unwrap());
    assert_eq!(intake.split.test.len(), 6);
    assert_eq!(intake.split.holdback.len(), 3);
    assert_eq!(intake.split.train.len(), 51);
    drop(store);

    let store = Store::open(&db).unwrap();
    let t = get_task(&store, "t1").unwrap();
    assert_eq!(t, intake.task);
    assert_eq!(t.task_type, TaskType::Instruct);
    assert_eq!(t.dataset, data);
    assert_eq!(load_split(&store, "t1").unwrap(), intake.split);
    let statuses: Vec<TaskStatus> = task_events(&store, "t1")
        .unwrap()
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(
        statuses,
        [
            TaskStatus::Pending,
            TaskStatus::PreparingData,
            TaskStatus::Ready
        ]
    );
    assert_eq!(list_tasks(&store).unwrap().len(), 1);

    // the same id twice is refused and changes nothing
    let before = count_rows(&store);
    let e = create_task(&store, &spec).unwrap_err().to_string();
    assert!(e.contains("task_id") && e.contains("already exists"), "{e}");
    assert_eq!(count_rows(&store), before);

    // JSON spec, generated id, custom test file
    let test = write(dir.path(), "test.jsonl", "{\"instruction\": \"say cow twice\", \"input\": \"\", \"output\": \"cow cow.\"}\n{\"instruction\": \"say dog twice\", \"input\": \"\", \"output\": \"dog dog.\"}\n");
    let json = format!(
        r#"{{"task_type": "instruct", "base_model": "{}", "dataset": "{}", "test_data": "{}",
            "hours_to_complete": 2, "split_seed": 7, "mapping": {{"field_instruction": "instruction", "field_output": "output"}}}}"#,
        model.display(),
        data.display(),
        test.display()
    );
    let j = TaskSpec::from_file(&write(dir.path(), "task.json", &json)).unwrap();
    let i2 = create_task(&store, &j).unwrap();
    assert!(i2.task.task_id.starts_with("task-"));
    assert_eq!(
        i2.split.test,
        vec![0, 1],
        "a custom test file is the whole test split"
    );
    assert_eq!(i2.split.train.len() + i2.split.holdback.len(), 60);
    assert_eq!(list_tasks(&store).unwrap().len(), 2);
}

#[test]
fn status_machine_refuses_illegal_moves() {
    let dir = tempfile::tempdir().unwrap();
    let model = save_tiny_model(dir.path());
    let data = write_dataset(dir.path(), 20);
    let store = Store::open(&dir.path().join("s.db")).unwrap();
    let spec =
        TaskSpec::parse(&spec_toml(&model, &data, "task_id = \"m\""), "spec", false).unwrap();
    create_task(&store, &spec).unwrap();
    let e = set_status(&store, "m", TaskStatus::Evaluating, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("illegal transition ready → evaluating"), "{e}");
    let e = set_status(&store, "m", TaskStatus::Pending, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("ready → pending"), "{e}");
    set_status(&store, "m", TaskStatus::Training, None).unwrap();
    advance_to(&store, "m", TaskStatus::Success).unwrap();
    assert_eq!(get_task(&store, "m").unwrap().status, TaskStatus::Success);
    let e = set_status(&store, "m", TaskStatus::Failure, Some("late"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("success → failure"), "{e}");
    assert!(advance_to(&store, "m", TaskStatus::Ready).is_err());
    let n = task_events(&store, "m").unwrap().len();
    assert_eq!(
        n, 6,
        "pending, preparing_data, ready, training, evaluating, success"
    );
    let e = set_status(&store, "nope", TaskStatus::Training, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no task `nope`"), "{e}");
}

#[test]
fn bad_specs_name_the_field_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let model = save_tiny_model(dir.path());
    let data = write_dataset(dir.path(), 30);
    let store = Store::open(&dir.path().join("s.db")).unwrap();
    let good = spec_toml(&model, &data, "");
    let cases: Vec<(String, &str)> = vec![
        (spec_toml(&model, &data, "bogus = 1"), "`bogus`"),
        (
            good.replace("hours_to_complete = 1.0", "hours_to_complete = 0.0"),
            "`hours_to_complete`",
        ),
        (
            good.replace("hours_to_complete = 1.0", "hours_to_complete = -3"),
            "`hours_to_complete`",
        ),
        (
            good.replace("hours_to_complete = 1.0", "hours_to_complete = \"two\""),
            "`hours_to_complete`: invalid type",
        ),
        (
            good.replace("hours_to_complete = 1.0\n", ""),
            "`hours_to_complete`: is required",
        ),
        (
            // a grpo task with an instruct mapping: the grpo mapping refuses its fields
            good.replace("task_type = \"instruct\"", "task_type = \"grpo\""),
            "field `mapping`: unknown field `field_input`",
        ),
        (
            good.replace("task_type = \"instruct\"", "task_type = \"summarise\""),
            "`task_type`: unknown task type",
        ),
        (
            good.replace("field_input = \"input\"", "field_inptu = \"input\""),
            "field_inptu",
        ),
        (spec_toml(&model, &data, "split_seed = -1"), "`split_seed`"),
        (spec_toml(&model, &data, "task_id = \"a b\""), "`task_id`"),
        (
            good.replace("field_instruction = \"instruction\"\n", ""),
            "`mapping.field_instruction`: is required",
        ),
    ];
    for (text, want) in &cases {
        let e = TaskSpec::parse(text, "spec.toml", false)
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "want {want:?} in: {e}");
    }
    // problems only the files show: checked at intake, nothing stored
    let intake_err = |text: &str| -> String {
        let spec = TaskSpec::parse(text, "spec.toml", false).unwrap();
        let e = create_task(&store, &spec).unwrap_err().to_string();
        assert_eq!(
            count_rows(&store),
            (0, 0, 0),
            "nothing half-created after: {e}"
        );
        e
    };
    let e = intake_err(&good.replace("field_output = \"output\"", "field_output = \"answer\""));
    assert!(
        e.contains("mapping") && e.contains("row 1") && e.contains("missing column `answer`"),
        "{e}"
    );
    let empty = write(dir.path(), "empty.json", "[]");
    let e = intake_err(&spec_toml(&model, &empty, ""));
    assert!(e.contains("`dataset`") && e.contains("empty.json"), "{e}");
    let tiny = write_dataset(&dir.path().join("x").tap_mkdir(), 5);
    let e = intake_err(&spec_toml(&model, &tiny, ""));
    assert!(
        e.contains("`dataset`") && e.contains("5 rows") && e.contains("at least 10"),
        "{e}"
    );
    let e = intake_err(&spec_toml(&dir.path().join("missing"), &data, ""));
    assert!(e.contains("`base_model`"), "{e}");
    let gpt2 = dir.path().join("gpt2").tap_mkdir();
    write(
        &gpt2,
        "config.json",
        r#"{"model_type": "gpt2", "n_embd": 8}"#,
    );
    let e = intake_err(&spec_toml(&gpt2, &data, ""));
    assert!(e.contains("`base_model`") && e.contains("gpt2"), "{e}");
    let chat =
        spec_toml(&model, &data, "").replace("task_type = \"instruct\"", "task_type = \"chat\"");
    let chat = chat.split("[mapping]").next().unwrap().to_string();
    let e = intake_err(&chat);
    assert!(e.contains("missing column `conversations`"), "{e}");
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}
impl TapMkdir for std::path::PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}
