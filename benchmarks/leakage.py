"""Leakage harness: synthetic patients with planted identifiers, through the pipeline's code.

Run: .venv/bin/python benchmarks/leakage.py [--patients 300] [--notes 2000] [--seed 7]
Prints (and benchmarks/leakage.out keeps) three tables, each measured in this run:

1. structured recall per category: HL7 v2 ORU^R01 and ADT^A01 messages with a planted
   value in every identifying PID, NK1, PV1, OBR, NTE and OBX field, mapped by
   ``gateway.normalize.to_fhir`` and de-identified by ``security.deid.Deidentifier``
   (what the process stage runs), once with free text removed (the default) and once
   with free text kept and tagged. A value is caught when neither it nor any of its
   words (4+ characters) appears anywhere in the output Bundle or the report.
2. free-text recall per category and precision: seeded clinical notes (filler sentences
   with eponyms, drugs, doses, scores and dates-free times, plus sentences carrying
   planted identifiers) scrubbed by ``FreeTextScrubber``. A planted identifier is caught
   when every letter and digit of it is inside a found span; a found span is a true
   positive when it overlaps a planted identifier.
3. the same notes sent as NTE/OBX text through to_fhir + Deidentifier(free_text="tag"):
   how many planted values survive anywhere in the output; and microseconds per note.

The generator is written by the engine's authors: its names, places and sentence shapes
are not drawn from real notes, so read the figures as regression bounds, not as a
measurement on a hospital's text.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import string
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from gateway.normalize import escape, to_fhir  # noqa: E402
from security.deid import Deidentifier, FreeTextScrubber  # noqa: E402

TODAY = date(2025, 6, 1)
PKEY, DKEY = b"leakage-pseudonym-key-32-bytes!!", b"leakage-dateshift-key-32-bytes!!"

# Census-common names (some also English words: the hard cases), and places.


def _split(text: str, sep: str = " ") -> list[str]:
    return text.split(sep)


FIRST = _split(
    "James Mary Robert Patricia John Jennifer Michael Linda David Elizabeth William "
    "Barbara Richard Susan Joseph Jessica Thomas Sarah Charles Karen Christopher Lisa "
    "Daniel Nancy Matthew Betty Anthony Sandra Mark Margaret Donald Ashley Steven "
    "Kimberly Andrew Emily Joshua Donna Kenneth Michelle Kevin Carol Brian Amanda George "
    "Melissa Timothy Deborah Grace Rose Hope Faith Joy June April Dawn Ruby Pearl Jade "
    "Iris Ivy Will Bill Frank Jack"
)
LAST = _split(
    "Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez "
    "Lopez Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez "
    "Thompson White Harris Sanchez Clark Ramirez Lewis Robinson Walker Young Allen King "
    "Wright Scott Torres Nguyen Hill Flores Green Adams Nelson Baker Hall Rivera "
    "Campbell Mitchell Carter Roberts Kowalczyk Okonkwo Papadopoulos Oyelaran Brzezinski "
    "Hunter Price Ward Bell Rice"
)
CITIES = _split(
    "Boston|Springfield|Worcester|Cambridge|Lowell|Chicago|Houston|Phoenix|Denver|"
    "Seattle|Portland|Grand Rapids|Baton Rouge|Salt Lake City|Fort Worth|San Antonio|"
    "Albuquerque|Tucson|Fresno|Sacramento|Omaha|Tulsa|Wichita|Cleveland|Pittsburgh|"
    "Cincinnati|Toledo|Buffalo|Rochester|Syracuse|Hartford|Providence|Newark|Richmond|"
    "Raleigh|Durham",
    "|",
)
STATES = _split("MA CA TX NY IL OH PA WA CO AZ")
STREETS = _split("Oak|Maple|Cedar|Elm|Washington|Lakeview|Highland|Quarry|Birchwood|Old Mill", "|")
SUFFIXES = _split("Street St Avenue Ave Road Rd Lane Drive Court Way Boulevard")
FACILITY_WORDS = ("Memorial Hospital", "General Hospital", "Medical Center", "Regional Hospital")

FILLER = (
    "Patient is alert and oriented x3, in no acute distress.",
    "Vital signs: BP {bp}/{dbp}, HR {hr}, RR {rr}, SpO2 {spo2}% on 2L nasal cannula.",
    "Creatinine {cr} mg/dL, up from baseline; potassium {k} mmol/L.",
    "Continue lisinopril {dose} mg daily and metoprolol 25 mg BID.",
    "Started Zosyn 4.5 g IV q8h for suspected aspiration pneumonia.",
    "Glasgow Coma Scale 15. Pupils equal and reactive.",
    "Foley catheter removed at {hh}:{mm}; voiding spontaneously.",
    "History of Parkinson disease, type 2 diabetes (HbA1c {a1c}%) and CHF with EF 35%.",
    "Morse Fall Scale score {n2}; Braden score {n1}. Bed alarm on.",
    "Murphy sign negative. Abdomen soft, non-tender.",
    "Denies chest pain, shortness of breath, nausea or vomiting.",
    "CT head without contrast showed no acute intracranial process.",
    "Plan discussed with the Internal Medicine team; Cardiology consulted.",
    "Pain {n1}/10, improved with Tylenol 650 mg PRN.",
    "Wound care per protocol; dressing clean, dry and intact.",
    "Transfer to 4 West telemetry when a bed is available.",
    "Will continue heparin drip and recheck PTT in 6 hours.",
    "COVID-19 PCR negative. MRSA nares screen pending.",
    "Tolerating a regular diet. Ambulating with a walker and standby assist.",
    "Wilson disease ruled out; ceruloplasmin within normal limits.",
    "Stevens-Johnson syndrome listed as a prior reaction to a sulfa drug.",
    "Lasix 40 mg IV given with good urine output.",
    "WBC {wbc}, hemoglobin {hgb}, platelets {plt}.",
    "Physical Therapy recommends discharge to home with Home Health services.",
    "Family meeting held; code status remains Full Code.",
    "Hodgkin lymphoma in remission since 2009.",
    "Trendelenburg position briefly for line placement; tolerated well.",
    "Last dose of Eliquis was {n1} days ago per the medication list.",
    "ECOG performance status 1. NYHA class II.",
    "Blood cultures x2 drawn before antibiotics.",
    "Reviewed EKG: sinus rhythm, rate {hr}, no ST changes.",
    "Bell palsy on the left diagnosed in 2015, resolved.",
    "Mark the surgical site before transfer to the OR.",
    "May resume home medications after the procedure.",
    "Crohn disease flare treated with prednisone taper last year.",
    "Chaplain visit offered; Spanish interpreter used for the consent discussion.",
    "Hope to discharge tomorrow if the White count keeps trending down.",
    "Brown sputum noted overnight. Green stool x1.",
    "Young adult sibling donor being evaluated by Hematology.",
    "Will follow up with Case Management about the Price of home oxygen.",
    "Jackson-Pratt drain output {n2} mL; Hemovac removed.",
    "Holter monitor and King-Devick test ordered by Neurology.",
    "Norco 5/325 mg PO q6h PRN; DuoNeb nebulizer q4h.",
    "Dr. on call notified of the potassium; no new orders.",
    "Lactated Ringer's at 75 mL/hr. Ensure shakes with meals.",
    "Mobile phone and reading glasses at bedside.",
    "Grace period for the Medicare appeal ends next week.",
    "Hunter syndrome excluded by the Genetics consult.",
    "Rose Bengal stain negative; Ophthalmology signed off.",
    "Bed 12, Cardiac Step-Down Unit, North Tower.",
)


@dataclass
class Note:
    text: str
    planted: list[tuple[int, int, str]] = field(default_factory=list)  # start, end, category


class _Gen:
    """Seeded generator of identifiers in the formats people write them."""

    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)

    def pick(self, seq: Any) -> Any:
        return self.r.choice(seq)

    def ood_name(self) -> str:
        """A plausible name that is in no dictionary (e.g. "Quorvath")."""
        cons, vow = "bdfgklmnprstvzq", "aeiou"
        parts = [self.pick(cons).upper()] + [
            self.pick(vow) + self.pick(cons) for _ in range(self.r.randint(2, 3))
        ]
        return "".join(parts) + self.pick(("", "a", "ski", "son", "ez"))

    def first(self) -> str:
        return str(self.pick(FIRST)) if self.r.random() < 0.8 else self.ood_name()

    def last(self) -> str:
        return str(self.pick(LAST)) if self.r.random() < 0.75 else self.ood_name()

    def digits(self, n: int) -> str:
        return "".join(self.pick(string.digits) for _ in range(n))

    def phone(self) -> str:
        a, b, c = f"{self.r.randint(201, 989)}", f"{self.r.randint(200, 999)}", self.digits(4)
        return str(
            self.pick(
                (f"({a}) {b}-{c}", f"{a}-{b}-{c}", f"{a}.{b}.{c}", f"+1 {a} {b} {c}", f"{a}{b}{c}")
            )
        )

    def email(self, first: str, last: str) -> str:
        dom = self.pick(("example.org", "mail.example.com", "inbox.example.net"))
        return f"{first.lower()}.{last.lower()}{self.r.randint(1, 99)}@{dom}"

    def ssn(self) -> str:
        a, b, c = self.digits(3), self.digits(2), self.digits(4)
        return str(self.pick((f"{a}-{b}-{c}", f"{a}-{b}-{c}", f"{a} {b} {c}")))

    def mrn(self) -> str:
        return str(self.pick((self.digits(8), "A" + self.digits(7), "MRN" + self.digits(6))))

    def account(self) -> str:
        return str(self.pick((self.digits(10), f"{self.digits(4)}-{self.digits(4)}")))

    def street(self) -> str:
        return f"{self.r.randint(1, 9999)} {self.pick(STREETS)} {self.pick(SUFFIXES)}"

    def zip(self) -> str:
        return self.digits(5) if self.r.random() < 0.7 else f"{self.digits(5)}-{self.digits(4)}"

    def day(self) -> date:
        return date(2024, 1, 1) + timedelta(days=self.r.randint(0, 500))

    def date_text(self) -> tuple[str, str]:
        """(a date as people write it, the cue before it)."""
        d = self.day()
        month = d.strftime("%B")
        forms = (
            f"{d.month}/{d.day}/{d.year}",
            f"{d.month:02d}/{d.day:02d}/{d.year % 100:02d}",
            d.isoformat(),
            f"{month} {d.day}, {d.year}",
            f"{d.day} {month} {d.year}",
            f"{month[:3]} {d.day}",
            f"{month} {d.year}",
            f"{d.month}/{d.day}",
        )
        text = str(self.pick(forms))
        return text, "on" if text.count("/") == 1 else self.pick(("on", "since", "dated", ""))

    def url(self) -> str:
        host = self.pick(("portal.example.org", "www.example-clinic.com", "telehealth.example.net"))
        return f"https://{host}/p/{self.digits(6)}" if self.r.random() < 0.7 else f"www.{host}"

    def ip(self) -> str:
        return ".".join(str(self.r.randint(1, 254)) for _ in range(4))

    def device(self) -> str:
        hexd = "0123456789ABCDEF"
        return str(
            self.pick(
                (
                    f"SN-{self.digits(4)}-{self.pick(string.ascii_uppercase)}{self.digits(3)}",
                    ":".join("".join(self.pick(hexd) for _ in range(2)) for _ in range(6)),
                    self.digits(15),
                    f"PM{self.digits(7)}",
                )
            )
        )

    def hospital(self) -> str:
        return f"{self.pick((*CITIES[:12], *LAST[:20]))} {self.pick(FACILITY_WORDS)}"


class _NoteBuilder:
    def __init__(self) -> None:
        self.parts: list[str] = []
        self.planted: list[tuple[int, int, str]] = []
        self.pos = 0

    def add(self, *chunks: str | tuple[str, str]) -> None:
        """Plain strings are filler; (value, category) pairs are planted identifiers."""
        for chunk in chunks:
            if isinstance(chunk, tuple):
                value, category = chunk
                self.planted.append((self.pos, self.pos + len(value), category))
                chunk = value
            self.parts.append(chunk)
            self.pos += len(chunk)

    def note(self) -> Note:
        return Note("".join(self.parts), self.planted)


def _phi_sentence(g: _Gen, b: _NoteBuilder) -> None:
    f, last = g.first(), g.last()
    kind = g.r.randrange(24)
    if kind == 0:
        b.add("Seen and examined by Dr. ", (last, "NAME"), ".")
    elif kind == 1:
        b.add("Discussed with Dr. ", (f"{f} {last}", "NAME"), " of cardiology.")
    elif kind == 2:
        b.add(g.pick(("Daughter", "Wife", "Son", "Husband")), " ", (f, "NAME"), " at bedside.")
    elif kind == 3:
        b.add("Spoke with her sister ", (f"{f} {last}", "NAME"), " by phone.")
    elif kind == 4:
        b.add(g.pick(("Mr.", "Mrs.", "Ms.")), " ", (last, "NAME"), " tolerated the procedure.")
    elif kind == 5:
        b.add((f"{f} {last}", "NAME"), " is a pleasant 67-year-old seen for follow-up.")
    elif kind == 6:
        b.add("Note signed by ", (f"{f} {last}", "NAME"), ", RN.")
    elif kind == 7:
        street, city, zip_ = g.street(), g.pick(CITIES), g.zip()
        b.add("Lives at ", (street, "ADDRESS"), ", ", (city, "LOCATION"), ", ")
        b.add(g.pick(STATES), " ", (zip_, "ZIP"), ".")
    elif kind == 8:
        b.add("Moved here from ", (g.pick(CITIES), "LOCATION"), " last year.")
    elif kind == 9:
        cue = g.pick(("Daughter's cell: ", "Call back at ", "Contact number is ", "phone "))
        b.add(cue, (g.phone(), "PHONE"), ".")
    elif kind == 10:
        b.add("Prefers email: ", (g.email(f, last), "EMAIL"), ".")
    elif kind == 11:
        b.add(g.pick(("SSN ", "Social security number: ")), (g.ssn(), "SSN"), " verified.")
    elif kind == 12:
        b.add(g.pick(("MRN: ", "Prior records under MRN ", "medical record number ")))
        b.add((g.mrn(), "MRN"), ".")
    elif kind == 13:
        b.add(g.pick(("Billing account ", "Acct #: ", "account number ")), (g.account(), "ACCOUNT"))
        b.add(".")
    elif kind == 14:
        text, cue = g.date_text()
        b.add(g.pick(("Admitted ", "Last colonoscopy ", "Surgery ")), f"{cue} " if cue else "")
        b.add((text, "DATE"), ".")
    elif kind == 15:
        age = str(g.r.randint(90, 104))
        b.add(
            *g.pick(
                (
                    (("", (age, "AGE"), "-year-old woman with dementia.")),
                    ("Widowed, aged ", (age, "AGE"), ", lives alone."),
                    ("", (age, "AGE"), " yo male, DNR."),
                )
            )
        )
    elif kind == 16:
        b.add(g.pick(("Portal: ", "See ")), (g.url(), "URL"), " for discharge instructions.")
    elif kind == 17:
        b.add("Home monitor at ", (g.ip(), "IP"), " uploaded overnight readings.")
    elif kind == 18:
        b.add(g.pick(("Pacemaker serial ", "Insulin pump ID ", "Device ")), (g.device(), "DEVICE"))
        b.add(" interrogated.")
    elif kind == 19:
        b.add("Transferred from ", (g.hospital(), "HOSPITAL"), " for higher level of care.")
    elif kind == 20:
        b.add("Nurse ", (f"{g.ood_name()} {g.ood_name()}", "NAME"), " assisted with transfer.")
    elif kind == 21:
        b.add((f"{last.upper()}, {f.upper()}", "NAME"), " - admitted from the ED.")
    elif kind == 22:
        b.add("Driver's license ", (f"{g.pick('ABCDS')}{g.digits(7)}", "DEVICE"), " on file.")
    else:
        b.add((f"{f} {last}", "NAME"), " called and asked for an update.")


def make_note(g: _Gen, phi: int = 3, filler: int = 5) -> Note:
    """Filler and planted sentences in random order; one note in five is in capitals,
    as many HL7 v2 senders write them."""
    b = _NoteBuilder()
    kinds = ["phi"] * phi + ["filler"] * filler
    g.r.shuffle(kinds)
    for k in kinds:
        if b.pos:
            b.add(" ")
        if k == "phi":
            _phi_sentence(g, b)
        else:
            vals = {
                "bp": g.r.randint(95, 170),
                "dbp": g.r.randint(50, 100),
                "hr": g.r.randint(50, 130),
                "rr": g.r.randint(12, 28),
                "spo2": g.r.randint(88, 100),
                "cr": g.r.randint(6, 30) / 10,
                "k": g.r.randint(30, 55) / 10,
                "dose": g.pick((5, 10, 20, 40)),
                "hh": f"{g.r.randint(0, 23):02d}",
                "mm": f"{g.r.randint(0, 59):02d}",
                "a1c": g.r.randint(55, 110) / 10,
                "n1": g.r.randint(1, 9),
                "n2": g.r.randint(10, 90),
                "wbc": g.r.randint(30, 200) / 10,
                "hgb": g.r.randint(70, 160) / 10,
                "plt": g.r.randint(90, 450),
            }
            b.add(str(g.pick(FILLER)).format(**vals))
    note = b.note()
    if g.r.random() < 0.2:
        note.text = note.text.upper()
    return note


def make_notes(n: int, seed: int) -> list[Note]:
    g = _Gen(seed)
    return [make_note(g) for _ in range(n)]


# -- structured fields ---------------------------------------------------------------


@dataclass
class Patient:
    message: bytes
    planted: dict[str, list[str]]  # category -> values that must not survive


def make_patient(g: _Gen, index: int, adt: bool) -> Patient:
    """One HL7 v2 message with a planted value in every identifying field."""
    e = escape
    f, last, mother = g.first() + "x", g.last() + "q", g.ood_name()
    nk_f, nk_l = g.ood_name(), g.ood_name()
    doc1, doc2, doc3 = g.ood_name(), g.ood_name(), g.ood_name()
    mrn, ssn, acct, dl = f"Q{g.digits(8)}", g.ssn().replace(" ", "-"), g.account(), g.digits(9)
    street, city, zip_ = g.street(), g.ood_name() + "ville", g.zip()
    nk_street = g.street()
    phone, nk_phone, email = g.phone(), g.phone(), g.email(f, last)
    employer, birthplace, alias = g.ood_name() + " Corp", g.ood_name() + "burg", g.ood_name()
    visit, ward = f"V{g.digits(8)}", g.ood_name() + "ward"
    old = g.r.random() < 0.3
    born = date(1925 + g.r.randint(0, 9), 1 + g.r.randint(0, 11), 1 + g.r.randint(0, 27))
    if not old:
        born = born.replace(year=born.year + 30)
    when = g.day()
    ts = f"{when:%Y%m%d}0930"
    note_nte, note_obx, narrative = g.ood_name(), g.ood_name(), g.ood_name()
    url, ip, device = g.url(), g.ip(), g.device()
    msg_type = "ADT^A01^ADT_A01" if adt else "ORU^R01^ORU_R01"
    segs = [
        f"MSH|^~\\&|LIS|HOSP|WARDGATE|WARDGATE|{ts}||{msg_type}|LEAK{index:05d}|P|2.5.1",
        f"PID|1|{mrn}|{mrn}^^^HOSP^MR~{ssn}^^^SSA^SS||{e(last)}^{e(f)}^Q^JR||{born:%Y%m%d}|F|"
        f"{e(alias)}^{e(f)}|2106-3|{e(street)}^Apt 4^{e(city)}^MA^{zip_}^USA||"
        f"{e(phone)}^PRN^PH^{e(email)}|{e(phone)}|en|M|CHR|{acct}|{ssn}|{dl}^MA|"
        f"{e(mother)}||{e(birthplace)}",
        f"NK1|1|{e(nk_l)}^{e(nk_f)}|DAU^Daughter|{e(nk_street)}^^{e(city)}^MA^{zip_}|"
        f"{e(nk_phone)}|{e(nk_phone)}||||{e(employer)}",
        f"PV1|1|I|{e(ward)}^101^A||||{e(doc1)}^{e(doc1)}^J|{e(doc2)}^JONES|{e(doc3)}^X||||||||"
        f"{e(doc1)}^REF|INP|{visit}|||||||||||||||||||||||||{ts}",
    ]
    if not adt:
        segs += [
            f"OBR|1||LEAK{index:05d}|VITALS^Vital signs^L|||{ts}",
            f"NTE|1||Daughter {e(note_nte)} reports {e(url)}",
            f"OBX|1|NM|8867-4^Heart rate^LN||80|/min^^UCUM|||||F|||{ts}",
            f"NTE|1||Seen by Dr. {e(note_nte)} device {e(device)} at {e(ip)}",
            f"OBX|2|TX|8251-1^Note^LN||Spoke with son {e(note_obx)} {e(phone)}||||||F|||{ts}",
            f"OBX|3|ST|DEV^Device^L||{e(device)}||||||F|||{ts}",
            f"OBX|4|TX|||Report narrative: wife {e(narrative)}, MRN {mrn}||||||F|||{ts}",
        ]
    planted = {
        "name": [f, last, mother, alias, nk_f, nk_l],
        "provider name": [doc1, doc2, doc3],
        "mrn": [mrn],
        "ssn": [ssn],
        "account": [acct],
        "license": [dl],
        "street": [street, nk_street],
        "city": [city, birthplace],
        "zip": [zip_],
        "phone": [phone, nk_phone],
        "email": [email],
        "employer": [employer],
        "visit number": [visit],
        "location": [ward],
        "date": [f"{when.isoformat()}T09:30", f"{born.isoformat()}"],
    }
    if old:
        planted["age over 89"] = [born.isoformat(), str(born.year)]
    if not adt:
        planted["free-text field (NTE/OBX)"] = [note_nte, note_obx, narrative, url, ip, device]
    segs = [s.rstrip("|") for s in segs]
    return Patient(("\r".join(segs) + "\r").encode(), planted)


def make_patients(n: int, seed: int) -> list[Patient]:
    g = _Gen(seed)
    return [make_patient(g, i, adt=i % 3 == 0) for i in range(n)]


def _survives(value: str, haystack: str) -> bool:
    """Whether ``value``, or a word of it of 4+ characters, stands in ``haystack`` as a word
    of its own ("Raliz" does not survive in "generalized")."""
    low = value.lower()
    words = [low, *(w for w in re.split(r"[^a-z0-9]+", low) if len(w) >= 4)]
    return any(re.search(rf"(?<![a-z0-9]){re.escape(w)}(?![a-z0-9])", haystack) for w in words if w)


def structured_recall(patients: list[Patient], free_text: str = "remove") -> dict[str, list[int]]:
    """Category -> [planted, caught], over the de-identified Bundle and report."""
    deid = Deidentifier(PKEY, DKEY, free_text=free_text, today=lambda: TODAY)  # type: ignore[arg-type]
    out: dict[str, list[int]] = {}
    for p in patients:
        result = deid.deidentify(to_fhir(p.message))
        report = [e.model_dump() for e in result.report]
        hay = json.dumps({"bundle": result.bundle, "report": report}).lower()
        for category, values in p.planted.items():
            row = out.setdefault(category, [0, 0])
            for v in values:
                row[0] += 1
                # a shifted date keeps its year (Safe Harbor allows it): look for the day
                row[1] += v.lower() not in hay if category == "date" else not _survives(v, hay)
    return out


@dataclass
class FreeTextScore:
    planted: Counter[str]
    caught: Counter[str]
    found: int
    true_found: int
    us_per_note: float

    @property
    def recall(self) -> float:
        return sum(self.caught.values()) / max(1, sum(self.planted.values()))

    @property
    def precision(self) -> float:
        return self.true_found / max(1, self.found)


def free_text_score(notes: list[Note], scrubber: FreeTextScrubber | None = None) -> FreeTextScore:
    s = scrubber or FreeTextScrubber()
    s.find("warm up the dictionaries")
    started = time.perf_counter()
    found_all = [s.find(n.text) for n in notes]
    elapsed = time.perf_counter() - started
    planted: Counter[str] = Counter()
    caught: Counter[str] = Counter()
    found = true_found = 0
    for note, spans in zip(notes, found_all, strict=True):
        covered = bytearray(len(note.text))
        for sp in spans:
            covered[sp.start : sp.end] = b"\x01" * (sp.end - sp.start)
            found += 1
            true_found += any(sp.start < e and st < sp.end for st, e, _ in note.planted)
        for st, e, cat in note.planted:
            planted[cat] += 1
            caught[cat] += all(covered[i] for i in range(st, e) if note.text[i].isalnum())
    return FreeTextScore(planted, caught, found, true_found, elapsed / len(notes) * 1e6)


def misses(notes: list[Note], scrubber: FreeTextScrubber | None = None) -> list[str]:
    """Debug aid: planted values missed and spans found outside any planted value."""
    s = scrubber or FreeTextScrubber()
    lines = []
    for note in notes:
        spans = s.find(note.text)
        covered = set()
        for sp in spans:
            covered.update(range(sp.start, sp.end))
            if not any(sp.start < e and st < sp.end for st, e, _ in note.planted):
                lines.append(f"FP {sp.category} {sp.rule}: {note.text[sp.start : sp.end]!r}")
        for st, e, cat in note.planted:
            if not all(i in covered for i in range(st, e) if note.text[i].isalnum()):
                lines.append(
                    f"FN {cat}: {note.text[st:e]!r} in {note.text[max(0, st - 30) : e + 10]!r}"
                )
    return lines


def pipeline_free_text_leaks(notes: list[Note]) -> tuple[int, int]:
    """(planted values, values found in the output) for notes sent as NTE and OBX text."""
    deid = Deidentifier(PKEY, DKEY, free_text="tag", today=lambda: TODAY)
    planted = leaked = 0
    for i, note in enumerate(notes):
        text = escape(note.text)
        segs = [
            f"MSH|^~\\&|LIS|HOSP|WARDGATE|WARDGATE|20240301101500||ORU^R01^ORU_R01|FT{i}|P|2.5.1",
            f"PID|1||FT{i:06d}^^^HOSP^MR||DOE^JANE||19600101|F",
            "OBR|1||FT|NOTE^Note^L|||20240301101000",
            "OBX|1|NM|8867-4^Heart rate^LN||80|/min^^UCUM|||||F",
            f"NTE|1||{text}" if i % 2 else f"OBX|2|TX|8251-1^Note^LN||{text}||||||F",
        ]
        result = deid.deidentify(to_fhir(("\r".join(segs) + "\r").encode()))
        hay = json.dumps(result.bundle)
        for st, e, _ in note.planted:
            planted += 1
            value = note.text[st:e]
            if len(value) >= 6:
                leaked += value in hay
            else:  # "96" of "96-year-old" is a leak only where it stood, not in "SpO2 96%"
                left, right = note.text[max(0, st - 5) : st], note.text[e : e + 5]
                leaked += f"{left}{value}" in hay or f"{value}{right}" in hay
    return planted, leaked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=300)
    parser.add_argument("--notes", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--misses", action="store_true", help="print each miss (debugging)")
    args = parser.parse_args()
    notes = make_notes(args.notes, args.seed)
    if args.misses:
        print("\n".join(misses(notes)))
        return
    patients = make_patients(args.patients, args.seed)
    print(f"leakage harness: seed {args.seed}, {args.patients} HL7 patients, {args.notes} notes")
    print("\n1. structured recall (value or any 4+ char word of it absent from Bundle + report)")
    removed, tagged = structured_recall(patients), structured_recall(patients, "tag")
    print(f"   {'category':28} {'planted':>8} {'free text removed':>18} {'free text tagged':>17}")
    for cat, (n, ok) in removed.items():
        ok2 = tagged[cat][1]
        print(f"   {cat:28} {n:8d} {ok / n:17.2%} {ok2 / n:17.2%}")
    score = free_text_score(notes)
    print("\n2. free text, FreeTextScrubber (tags): recall per planted category")
    for cat in sorted(score.planted):
        n, ok = score.planted[cat], score.caught[cat]
        print(f"   {cat:12} {n:6d} planted {ok:6d} caught {ok / n:8.2%}")
    print(
        f"   overall recall {score.recall:.2%}  precision {score.precision:.2%}"
        f"  ({score.true_found} of {score.found} spans on a planted value)"
    )
    print(
        f"   {score.us_per_note:.0f} us per note"
        f" (mean {sum(len(n.text) for n in notes) / len(notes):.0f} chars)"
    )
    planted, leaked = pipeline_free_text_leaks(notes[: min(500, len(notes))])
    print("\n3. notes as NTE / OBX text through to_fhir + Deidentifier(free_text='tag')")
    print(
        f"   {planted} planted values, {leaked} found verbatim in the output"
        f" ({1 - leaked / planted:.2%} removed)"
    )


if __name__ == "__main__":
    main()
