"""Keyed, consistent de-identification of DICOM: the one place patient identity is removed.

`Pseudonymizer(key)` turns identifiers into pseudonyms with HMAC-SHA256 under a provider's secret key,
so the same key gives the same pseudonym, UID and date shift on every run and on every machine, and
nobody without the key can go back (or test a guess). `deidentify(ds)` applies the DICOM PS3.15 Basic
Application Level Confidentiality Profile to a pydicom Dataset in place:

- through dicognito (https://github.com/blairconrad/dicognito): every PN (names: referring physician,
  operators...) and known identifying ID, address, institution, station and equipment values are
  replaced, unwanted elements (insurance, telephone, religion...) removed, TM values shifted with
  their dates. We chose dicognito over pydicom/deid because it is maintained, small (pydicom only),
  implements the profile as code rather than a recipe file we would have to keep, walks nested
  sequences, and takes our own element handlers, so the keyed rules below replace its random ones;
- on top, keyed by us: PatientID and PatientName = `patient(identity)`, every instance UID (not the
  class or transfer-syntax UIDs) = `uid(original)`, so a DICOM-SEG made from a series references the
  de-identified series consistently across runs, and every DA/DT shifted by the per-patient
  `date_shift_days` (intervals between one patient's studies are kept);
- private tags removed (the profile's default: their content is unknown);
- PatientIdentityRemoved = YES (NO where BurnedInAnnotation = YES: the pixels may still show a name;
  callers exclude such series), DeidentificationMethod names the profile and the library version,
  DeidentificationMethodCodeSequence the profile and its options (DCM 113100, 113107, 113108).

Patient characteristics (sex, age, size, weight) are kept, as in the profile's Retain Patient
Characteristics Option and in dicognito. Free-text descriptions (SeriesDescription...) are kept: the
series classifier needs them and they name the protocol, not the patient.

The patient's identity (`identity_of`) is PatientID; a dataset without one falls back to PatientName,
then to its StudyInstanceUID (one unknown patient per study), so nothing ever assumes an attribute.

    p = Pseudonymizer.from_key_file("provider.key", create=True)
    p.deidentify(ds)          # ds.PatientID == p.patient("PHIPID-73519"); is_deidentified(ds) is True
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from dicognito.element_anonymizer import ElementAnonymizer

from .errors import InputError

KEY_BYTES = 32             # a new key: 256 random bits, stored as 64 hex digits
MIN_KEY_BYTES = 16         # shorter keys are guessable
MAX_SHIFT_DAYS = 3650      # dates move back by 1 to 3650 days, per patient
PROFILE = "PS3.15 Basic Profile"
# DICOM PS3.16 CID 7050: the profile and the options our behaviour matches.
METHOD_CODES = (("113100", "Basic Application Confidentiality Profile"),
                ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
                ("113108", "Retain Patient Characteristics Option"))


def library() -> str:
    """The de-identification library and its version, e.g. "dicognito 0.19.0"."""
    from dicognito import __version__

    return f"dicognito {__version__}"


class Pseudonymizer:
    """Keyed pseudonyms for one provider key (module docstring). Deterministic: no state but the key."""

    def __init__(self, key: bytes):
        if len(key) < MIN_KEY_BYTES:
            raise InputError("pseudonymization key", f"must hold at least {MIN_KEY_BYTES} bytes", f"{len(key)} bytes",
                             "let `--key-file` create a new key file")
        self._key = bytes(key)

    @classmethod
    def from_key_file(cls, path, create: bool = False) -> "Pseudonymizer":
        """The key stored in `path` (hex digits). A missing file is created (mode 0600, a new random
        key) when `create`, else an InputError; so is an unreadable or too short key."""
        path = Path(path)
        if not path.exists() and create:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)  # never readable by others
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(KEY_BYTES) + "\n")
        if not path.is_file():
            raise InputError(path, "key file not found", None, "check the path, or create one with --key-file")
        try:
            key = bytes.fromhex(path.read_text().strip())
        except (ValueError, UnicodeDecodeError):
            raise InputError(path, "a key file holds hex digits", "other content",
                             "pass the key file the import created") from None
        return cls(key)

    @classmethod
    def ephemeral(cls) -> "Pseudonymizer":
        """A random key for one run: pseudonyms no later run (and nobody) can reproduce."""
        return cls(secrets.token_bytes(KEY_BYTES))

    def _digest(self, purpose: str, value: str) -> bytes:
        # The purpose separates the uses: a patient id and a UID with the same text map independently.
        return hmac.new(self._key, f"{purpose}\x00{value}".encode(), hashlib.sha256).digest()

    def fingerprint(self) -> str:
        """8 hex digits naming the key (not revealing it): a dataset records which key made it."""
        return self._digest("fingerprint", "").hex()[:8]

    def patient(self, patient_id: str) -> str:
        """The patient's pseudonym: "PZ" + 10 base32 characters (50 bits), e.g. "PZK3M7Q2XW4A"."""
        return "PZ" + base64.b32encode(self._digest("patient", str(patient_id))).decode()[:10]

    def token(self, purpose: str, value: str, n: int = 6) -> str:
        """A short keyed base32 token (n characters) for `value`, e.g. a study or file reference."""
        return base64.b32encode(self._digest(purpose, str(value))).decode()[:n]

    def uid(self, uid: str) -> str:
        """A valid DICOM UID for `uid`: "2.25." + the decimal of 128 HMAC bits (at most 44 characters)."""
        return "2.25." + str(int.from_bytes(self._digest("uid", str(uid).strip())[:16], "big"))

    def date_shift_days(self, patient_id: str) -> int:
        """The patient's date shift in days, in [-MAX_SHIFT_DAYS, -1] (dates only move back)."""
        return -(int.from_bytes(self._digest("date", str(patient_id))[:8], "big") % MAX_SHIFT_DAYS + 1)

    def deidentify(self, ds) -> None:
        """De-identify the pydicom Dataset `ds` in place (module docstring); any attribute may be absent."""
        from dicognito.anonymizer import Anonymizer
        from dicognito.datetimeanonymizer import DateTimeAnonymizer
        from pydicom.dataset import FileMetaDataset

        identity = identity_of(ds)
        ds.remove_private_tags()
        # dicognito's own random choices (fake physician names...) are seeded per key and patient.
        anonymizer = Anonymizer(seed=self._digest("dicognito", identity).hex())
        anonymizer.add_element_handler(DateTimeAnonymizer(24 * self.date_shift_days(identity)))
        anonymizer.add_element_handler(_KeyedIdentity(self, self.patient(identity)))
        had_meta = getattr(ds, "file_meta", None) is not None
        if not had_meta:
            ds.file_meta = FileMetaDataset()  # dicognito walks the file meta too
        anonymizer.anonymize(ds)
        if not had_meta:
            del ds.file_meta
        ds.PatientID = ds.PatientName = self.patient(identity)  # set even where the source had none
        for keyword in ("PatientBirthDate", "PatientBirthTime"):  # the profile's Z: empty, never shifted
            if keyword in ds:
                setattr(ds, keyword, "")
        _mark(ds)


def identity_of(ds) -> str:
    """Who the dataset is about, as `Pseudonymizer.patient` keys it: PatientID, else "name:" +
    PatientName, else "study:" + StudyInstanceUID, else "" (module docstring)."""
    for keyword, prefix in (("PatientID", ""), ("PatientName", "name:"), ("StudyInstanceUID", "study:")):
        value = str(ds.get(keyword, "") or "").strip()
        if value:
            return prefix + value
    return ""


def is_deidentified(ds) -> bool:
    """PatientIdentityRemoved == "YES" (absent: False)."""
    return str(ds.get("PatientIdentityRemoved", "") or "").upper() == "YES"


def _mark(ds) -> None:
    from pydicom.dataset import Dataset

    burned = str(ds.get("BurnedInAnnotation", "") or "").upper() == "YES"
    ds.PatientIdentityRemoved = "NO" if burned else "YES"
    ds.DeidentificationMethod = [PROFILE, library(), "keyed pseudonyms, UIDs and date shift"]
    codes = []
    for value, meaning in METHOD_CODES:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
        codes.append(item)
    ds.DeidentificationMethodCodeSequence = codes


class _KeyedIdentity(ElementAnonymizer):
    """A dicognito element handler, run first: PatientID and PatientName become the pseudonym, instance
    UIDs their keyed `uid` (class and transfer-syntax UIDs stay, as in dicognito's UIAnonymizer)."""

    def __init__(self, pseudonymizer: Pseudonymizer, pseudonym: str):
        self.p, self.pseudonym = pseudonymizer, pseudonym

    def __call__(self, dataset, element) -> bool:
        from pydicom.datadict import keyword_for_tag

        keyword = keyword_for_tag(element.tag)
        if keyword in ("PatientID", "PatientName"):
            element.value = self.pseudonym
            return True
        if element.VR != "UI" or keyword.endswith("ClassUID") or keyword == "TransferSyntaxUID":
            return False
        if element.value:
            values = element.value if element.VM > 1 else [element.value]
            new = [self.p.uid(v) for v in values]
            element.value = new if element.VM > 1 else new[0]
        return True

    def describe_actions(self):
        yield "Replace PatientID and PatientName with the keyed pseudonym"
        yield "Replace all instance UIs with keyed UIDs (2.25.<HMAC>)"
