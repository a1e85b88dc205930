"""PS3.15 Annex E Table E.1-1 (DICOM 2024b): the attributes and their Basic Profile actions.

This module is data. Each row of ``_ROWS`` is one row of the standard's table::

    gggg,eeee  BASIC   M  P  Attribute Name

- ``BASIC`` is the Basic Application Level Confidentiality Profile column, verbatim:
  ``X`` remove, ``Z`` zero-length, ``D`` dummy, ``U`` consistent UID replacement, and the
  compound codes ``X/Z``, ``X/D``, ``X/Z/D``, ``Z/D``, ``X/Z/U*`` (resolved in ``_rules``).
- ``M`` is the *Retain Longitudinal Temporal Information with Modified Dates Option*
  column (``C`` where the option modifies the attribute, ``.`` where it is silent).
- ``P`` is the *Retain Patient Characteristics Option* column (``K``, ``C`` or ``.``).
- ``x`` in a tag is a wildcard: ``50xx,xxxx`` (curves) and ``60xx,3000`` / ``60xx,4000``
  (overlays) stand for every even repeating group ``50xx`` / ``60xx``.

The table's last row, *Private Attributes* ``(gggg,eeee) where gggg is odd``, action ``X``,
is implemented by the engine as a rule rather than listed here. Source: the standard's
Table E.1-1 as published in DICOM PS3.15 2024b (the row set was checked against a
machine-readable extraction of that release; the other option columns are not carried).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

REVISION: Final = "2024b"

_ROWS: Final = """
0000,1000  X       .  .  Affected SOP Instance UID
0000,1001  U       .  .  Requested SOP Instance UID
0002,0003  U       .  .  Media Storage SOP Instance UID
0004,1511  U       .  .  Referenced SOP Instance UID in File
0008,0012  X/D     C  .  Instance Creation Date
0008,0013  X/Z/D   C  .  Instance Creation Time
0008,0014  U       .  .  Instance Creator UID
0008,0015  X       C  .  Instance Coercion DateTime
0008,0017  U       .  .  Acquisition UID
0008,0018  U       .  .  SOP Instance UID
0008,0019  U       .  .  Pyramid UID
0008,0020  Z       C  .  Study Date
0008,0021  X/D     C  .  Series Date
0008,0022  X/Z     C  .  Acquisition Date
0008,0023  Z/D     C  .  Content Date
0008,0024  X       C  .  Overlay Date
0008,0025  X       C  .  Curve Date
0008,002A  X/Z/D   C  .  Acquisition DateTime
0008,0030  Z       C  .  Study Time
0008,0031  X/D     C  .  Series Time
0008,0032  X/Z     C  .  Acquisition Time
0008,0033  Z/D     C  .  Content Time
0008,0034  X       C  .  Overlay Time
0008,0035  X       C  .  Curve Time
0008,0050  Z       .  .  Accession Number
0008,0054  X       .  .  Retrieve AE Title
0008,0055  X       .  .  Station AE Title
0008,0058  U       .  .  Failed SOP Instance UID List
0008,0080  X/Z/D   .  .  Institution Name
0008,0081  X       .  .  Institution Address
0008,0082  X/Z/D   .  .  Institution Code Sequence
0008,0090  Z       .  .  Referring Physician's Name
0008,0092  X       .  .  Referring Physician's Address
0008,0094  X       .  .  Referring Physician's Telephone Numbers
0008,0096  X       .  .  Referring Physician Identification Sequence
0008,009C  Z       .  .  Consulting Physician's Name
0008,009D  X       .  .  Consulting Physician Identification Sequence
0008,0106  D       C  .  Context Group Version
0008,0107  D       C  .  Context Group Local Version
0008,0201  X       C  .  Timezone Offset From UTC
0008,1000  X       .  .  Network ID
0008,1010  X/Z/D   .  .  Station Name
0008,1030  X       .  .  Study Description
0008,103E  X       .  .  Series Description
0008,1040  X       .  .  Institutional Department Name
0008,1041  X       .  .  Institutional Department Type Code Sequence
0008,1048  X       .  .  Physician(s) of Record
0008,1049  X       .  .  Physician(s) of Record Identification Sequence
0008,1050  X       .  .  Performing Physician's Name
0008,1052  X       .  .  Performing Physician Identification Sequence
0008,1060  X       .  .  Name of Physician(s) Reading Study
0008,1062  X       .  .  Physician(s) Reading Study Identification Sequence
0008,1070  X/Z/D   .  .  Operators' Name
0008,1072  X/D     .  .  Operator Identification Sequence
0008,1080  X       .  .  Admitting Diagnoses Description
0008,1084  X       .  .  Admitting Diagnoses Code Sequence
0008,1088  X       .  .  Pyramid Description
0008,1110  X/Z     .  .  Referenced Study Sequence
0008,1111  X/Z/D   .  .  Referenced Performed Procedure Step Sequence
0008,1120  X       .  .  Referenced Patient Sequence
0008,1140  X/Z/U*  .  .  Referenced Image Sequence
0008,1155  U       .  .  Referenced SOP Instance UID
0008,1195  U       .  .  Transaction UID
0008,2111  X       .  .  Derivation Description
0008,2112  X/Z/U*  .  .  Source Image Sequence
0008,3010  U       .  .  Irradiation Event UID
0008,4000  X       .  .  Identifying Comments
0010,0010  Z       .  .  Patient's Name
0010,0020  Z/D     .  .  Patient ID
0010,0021  X       .  .  Issuer of Patient ID
0010,0030  Z       .  .  Patient's Birth Date
0010,0032  X       .  .  Patient's Birth Time
0010,0040  Z       .  K  Patient's Sex
0010,0050  X       .  .  Patient's Insurance Plan Code Sequence
0010,0101  X       .  .  Patient's Primary Language Code Sequence
0010,0102  X       .  .  Patient's Primary Language Modifier Code Sequence
0010,1000  X       .  .  Other Patient IDs
0010,1001  X       .  .  Other Patient Names
0010,1002  X       .  .  Other Patient IDs Sequence
0010,1005  X       .  .  Patient's Birth Name
0010,1010  X       .  K  Patient's Age
0010,1020  X       .  K  Patient's Size
0010,1030  X       .  K  Patient's Weight
0010,1040  X       .  .  Patient's Address
0010,1050  X       .  .  Insurance Plan Identification
0010,1060  X       .  .  Patient's Mother's Birth Name
0010,1080  X       .  .  Military Rank
0010,1081  X       .  .  Branch of Service
0010,1090  X       .  .  Medical Record Locator
0010,1100  X       .  .  Referenced Patient Photo Sequence
0010,2000  X       .  .  Medical Alerts
0010,2110  X       .  C  Allergies
0010,2150  X       .  .  Country of Residence
0010,2152  X       .  .  Region of Residence
0010,2154  X       .  .  Patient's Telephone Numbers
0010,2155  X       .  .  Patient's Telecom Information
0010,2160  X       .  K  Ethnic Group
0010,2180  X       .  .  Occupation
0010,21A0  X       .  K  Smoking Status
0010,21B0  X       .  .  Additional Patient History
0010,21C0  X       .  K  Pregnancy Status
0010,21D0  X       C  .  Last Menstrual Date
0010,21F0  X       .  .  Patient's Religious Preference
0010,2203  X/Z     .  K  Patient's Sex Neutered
0010,2297  X       .  .  Responsible Person
0010,2299  X       .  .  Responsible Organization
0010,4000  X       .  .  Patient Comments
0012,0010  D       .  .  Clinical Trial Sponsor Name
0012,0020  D       .  .  Clinical Trial Protocol ID
0012,0021  Z       .  .  Clinical Trial Protocol Name
0012,0022  X       .  .  Issuer of Clinical Trial Protocol ID
0012,0023  X       .  .  Other Clinical Trial Protocol IDs Sequence
0012,0030  Z       .  .  Clinical Trial Site ID
0012,0031  Z       .  .  Clinical Trial Site Name
0012,0032  X       .  .  Issuer of Clinical Trial Site ID
0012,0040  D       .  .  Clinical Trial Subject ID
0012,0041  X       .  .  Issuer of Clinical Trial Subject ID
0012,0042  D       .  .  Clinical Trial Subject Reading ID
0012,0043  X       .  .  Issuer of Clinical Trial Subject Reading ID
0012,0050  Z       .  .  Clinical Trial Time Point ID
0012,0051  X       .  .  Clinical Trial Time Point Description
0012,0055  X       .  .  Issuer of Clinical Trial Time Point ID
0012,0060  Z       .  .  Clinical Trial Coordinating Center Name
0012,0071  X       .  .  Clinical Trial Series ID
0012,0072  X       .  .  Clinical Trial Series Description
0012,0073  X       .  .  Issuer of Clinical Trial Series ID
0012,0081  D       .  .  Clinical Trial Protocol Ethics Committee Name
0012,0082  X       .  .  Clinical Trial Protocol Ethics Committee Approval Number
0012,0086  X       C  .  Ethics Committee Approval Effectiveness Start Date
0012,0087  X       C  .  Ethics Committee Approval Effectiveness End Date
0014,407C  X       C  .  Calibration Time
0014,407E  X       C  .  Calibration Date
0016,002B  X       .  .  Maker Note
0016,004B  X       .  .  Device Setting Description
0016,004D  X       .  .  Camera Owner Name
0016,004E  X       .  .  Lens Specification
0016,004F  X       .  .  Lens Make
0016,0050  X       .  .  Lens Model
0016,0051  X       .  .  Lens Serial Number
0016,0070  X       .  .  GPS Version ID
0016,0071  X       .  .  GPS Latitude Ref
0016,0072  X       .  .  GPS Latitude
0016,0073  X       .  .  GPS Longitude Ref
0016,0074  X       .  .  GPS Longitude
0016,0075  X       .  .  GPS Altitude Ref
0016,0076  X       .  .  GPS Altitude
0016,0077  X       .  .  GPS Time Stamp
0016,0078  X       .  .  GPS Satellites
0016,0079  X       .  .  GPS Status
0016,007A  X       .  .  GPS Measure Mode
0016,007B  X       .  .  GPS DOP
0016,007C  X       .  .  GPS Speed Ref
0016,007D  X       .  .  GPS Speed
0016,007E  X       .  .  GPS Track Ref
0016,007F  X       .  .  GPS Track
0016,0080  X       .  .  GPS Img Direction Ref
0016,0081  X       .  .  GPS Img Direction
0016,0082  X       .  .  GPS Map Datum
0016,0083  X       .  .  GPS Dest Latitude Ref
0016,0084  X       .  .  GPS Dest Latitude
0016,0085  X       .  .  GPS Dest Longitude Ref
0016,0086  X       .  .  GPS Dest Longitude
0016,0087  X       .  .  GPS Dest Bearing Ref
0016,0088  X       .  .  GPS Dest Bearing
0016,0089  X       .  .  GPS Dest Distance Ref
0016,008A  X       .  .  GPS Dest Distance
0016,008B  X       .  .  GPS Processing Method
0016,008C  X       .  .  GPS Area Information
0016,008D  X       C  .  GPS Date Stamp
0016,008E  X       .  .  GPS Differential
0018,0010  Z/D     .  .  Contrast/Bolus Agent
0018,0027  X       C  .  Intervention Drug Stop Time
0018,0035  X       C  .  Intervention Drug Start Time
0018,1000  X/Z/D   .  .  Device Serial Number
0018,1002  U       .  .  Device UID
0018,1004  X       .  .  Plate ID
0018,1005  X       .  .  Generator ID
0018,1007  X       .  .  Cassette ID
0018,1008  X       .  .  Gantry ID
0018,1009  X       .  .  Unique Device Identifier
0018,100A  X       .  .  UDI Sequence
0018,100B  U       .  .  Manufacturer's Device Class UID
0018,1012  X       C  .  Date of Secondary Capture
0018,1014  X       C  .  Time of Secondary Capture
0018,1030  X/D     .  .  Protocol Name
0018,1042  X       C  .  Contrast/Bolus Start Time
0018,1043  X       C  .  Contrast/Bolus Stop Time
0018,1072  X       C  .  Radiopharmaceutical Start Time
0018,1073  X       C  .  Radiopharmaceutical Stop Time
0018,1078  X       C  .  Radiopharmaceutical Start DateTime
0018,1079  X       C  .  Radiopharmaceutical Stop DateTime
0018,11BB  D       .  .  Acquisition Field Of View Label
0018,1200  X       C  .  Date of Last Calibration
0018,1201  X       C  .  Time of Last Calibration
0018,1202  X       C  .  DateTime of Last Calibration
0018,1203  Z       C  .  Calibration DateTime
0018,1204  X       C  .  Date of Manufacture
0018,1205  X       C  .  Date of Installation
0018,1400  X/D     .  .  Acquisition Device Processing Description
0018,2042  U       .  .  Target UID
0018,4000  X       .  .  Acquisition Comments
0018,5011  X       .  .  Transducer Identification Sequence
0018,700A  X/D     .  .  Detector ID
0018,700C  X/D     C  .  Date of Last Detector Calibration
0018,700E  X/D     C  .  Time of Last Detector Calibration
0018,9074  D       C  .  Frame Acquisition DateTime
0018,9151  D       C  .  Frame Reference DateTime
0018,9185  X       .  .  Respiratory Motion Compensation Technique Description
0018,9367  D       .  .  X-Ray Source ID
0018,9369  D       C  .  Source Start DateTime
0018,936A  D       C  .  Source End DateTime
0018,9371  D       .  .  X-Ray Detector ID
0018,9373  X       .  .  X-Ray Detector Label
0018,937B  X       .  .  Multi-energy Acquisition Description
0018,937F  X       .  .  Decomposition Description
0018,9424  X       .  .  Acquisition Protocol Description
0018,9516  X/D     C  .  Start Acquisition DateTime
0018,9517  X/D     C  .  End Acquisition DateTime
0018,9623  D       C  .  Functional Sync Pulse
0018,9701  D       C  .  Decay Correction DateTime
0018,9804  D       C  .  Exclusion Start DateTime
0018,9919  Z/D     C  .  Instruction Performed DateTime
0018,9937  X       .  .  Requested Series Description
0018,A002  X       C  .  Contribution DateTime
0018,A003  X       .  .  Contribution Description
0020,000D  U       .  .  Study Instance UID
0020,000E  U       .  .  Series Instance UID
0020,0010  Z       .  .  Study ID
0020,0027  X       .  .  Pyramid Label
0020,0052  U       .  .  Frame of Reference UID
0020,0200  U       .  .  Synchronization Frame of Reference UID
0020,3401  X       .  .  Modifying Device ID
0020,3403  X       C  .  Modified Image Date
0020,3405  X       C  .  Modified Image Time
0020,3406  X       .  .  Modified Image Description
0020,4000  X       .  .  Image Comments
0020,9158  X       .  .  Frame Comments
0020,9161  U       .  .  Concatenation UID
0020,9164  U       .  .  Dimension Organization UID
0028,1199  U       .  .  Palette Color Lookup Table UID
0028,1214  U       .  .  Large Palette Color Lookup Table UID
0028,4000  X       .  .  Image Presentation Comments
0032,0012  X       .  .  Study ID Issuer
0032,0032  X       C  .  Study Verified Date
0032,0033  X       C  .  Study Verified Time
0032,0034  X       C  .  Study Read Date
0032,0035  X       C  .  Study Read Time
0032,1000  X       C  .  Scheduled Study Start Date
0032,1001  X       C  .  Scheduled Study Start Time
0032,1010  X       C  .  Scheduled Study Stop Date
0032,1011  X       C  .  Scheduled Study Stop Time
0032,1020  X       .  .  Scheduled Study Location
0032,1021  X       .  .  Scheduled Study Location AE Title
0032,1030  X       .  .  Reason for Study
0032,1032  X       .  .  Requesting Physician
0032,1033  X       .  .  Requesting Service
0032,1040  X       C  .  Study Arrival Date
0032,1041  X       C  .  Study Arrival Time
0032,1050  X       C  .  Study Completion Date
0032,1051  X       C  .  Study Completion Time
0032,1060  X/Z     .  .  Requested Procedure Description
0032,1066  X       .  .  Reason for Visit
0032,1067  X       .  .  Reason for Visit Code Sequence
0032,1070  X       .  .  Requested Contrast Agent
0032,4000  X       .  .  Study Comments
0034,0001  D       .  .  Flow Identifier Sequence
0034,0002  D       .  .  Flow Identifier
0034,0005  D       .  .  Source Identifier
0034,0007  D       C  .  Frame Origin Timestamp
0038,0004  X       .  .  Referenced Patient Alias Sequence
0038,0010  X       .  .  Admission ID
0038,0011  X       .  .  Issuer of Admission ID
0038,0014  X       .  .  Issuer of Admission ID Sequence
0038,001A  X       C  .  Scheduled Admission Date
0038,001B  X       C  .  Scheduled Admission Time
0038,001C  X       C  .  Scheduled Discharge Date
0038,001D  X       C  .  Scheduled Discharge Time
0038,001E  X       .  .  Scheduled Patient Institution Residence
0038,0020  X       C  .  Admitting Date
0038,0021  X       C  .  Admitting Time
0038,0030  X       C  .  Discharge Date
0038,0032  X       C  .  Discharge Time
0038,0040  X       .  .  Discharge Diagnosis Description
0038,0050  X       .  C  Special Needs
0038,0060  X       .  .  Service Episode ID
0038,0061  X       .  .  Issuer of Service Episode ID
0038,0062  X       .  .  Service Episode Description
0038,0064  X       .  .  Issuer of Service Episode ID Sequence
0038,0300  X       .  .  Current Patient Location
0038,0400  X       .  .  Patient's Institution Residence
0038,0500  X       .  C  Patient State
0038,4000  X       .  .  Visit Comments
003A,0310  U       .  .  Multiplex Group UID
003A,0314  D       C  .  Impedance Measurement DateTime
003A,0329  X       .  .  Waveform Filter Description
003A,032B  X       .  .  Filter Lookup Table Description
0040,0001  X       .  .  Scheduled Station AE Title
0040,0002  X       C  .  Scheduled Procedure Step Start Date
0040,0003  X       C  .  Scheduled Procedure Step Start Time
0040,0004  X       C  .  Scheduled Procedure Step End Date
0040,0005  X       C  .  Scheduled Procedure Step End Time
0040,0006  X       .  .  Scheduled Performing Physician's Name
0040,0007  X       .  .  Scheduled Procedure Step Description
0040,0009  X       .  .  Scheduled Procedure Step ID
0040,000B  X       .  .  Scheduled Performing Physician Identification Sequence
0040,0010  X       .  .  Scheduled Station Name
0040,0011  X       .  .  Scheduled Procedure Step Location
0040,0012  X       .  C  Pre-Medication
0040,0241  X       .  .  Performed Station AE Title
0040,0242  X       .  .  Performed Station Name
0040,0243  X       .  .  Performed Location
0040,0244  X       C  .  Performed Procedure Step Start Date
0040,0245  X       C  .  Performed Procedure Step Start Time
0040,0250  X       C  .  Performed Procedure Step End Date
0040,0251  X       C  .  Performed Procedure Step End Time
0040,0253  X       .  .  Performed Procedure Step ID
0040,0254  X       .  .  Performed Procedure Step Description
0040,0275  X       .  .  Request Attributes Sequence
0040,0280  X       .  .  Comments on the Performed Procedure Step
0040,0310  X       .  .  Comments on Radiation Dose
0040,050A  X       .  .  Specimen Accession Number
0040,0512  D       .  .  Container Identifier
0040,0513  Z       .  .  Issuer of the Container Identifier Sequence
0040,051A  X       .  .  Container Description
0040,0551  D       .  .  Specimen Identifier
0040,0554  U       .  .  Specimen UID
0040,0555  X/Z     .  .  Acquisition Context Sequence
0040,0562  Z       .  .  Issuer of the Specimen Identifier Sequence
0040,0600  X       .  .  Specimen Short Description
0040,0602  X       .  .  Specimen Detailed Description
0040,0610  Z       .  .  Specimen Preparation Sequence
0040,06FA  X       .  .  Slide Identifier
0040,1001  X       .  .  Requested Procedure ID
0040,1002  X       .  .  Reason for the Requested Procedure
0040,1004  X       .  .  Patient Transport Arrangements
0040,1005  X       .  .  Requested Procedure Location
0040,100A  X       .  .  Reason for Requested Procedure Code Sequence
0040,1010  X       .  .  Names of Intended Recipients of Results
0040,1011  X       .  .  Intended Recipients of Results Identification Sequence
0040,1101  D       .  .  Person Identification Code Sequence
0040,1102  X       .  .  Person's Address
0040,1103  X       .  .  Person's Telephone Numbers
0040,1104  X       .  .  Person's Telecom Information
0040,1400  X       .  .  Requested Procedure Comments
0040,2001  X       .  .  Reason for the Imaging Service Request
0040,2004  X       C  .  Issue Date of Imaging Service Request
0040,2005  X       C  .  Issue Time of Imaging Service Request
0040,2008  X       .  .  Order Entered By
0040,2009  X       .  .  Order Enterer's Location
0040,2010  X       .  .  Order Callback Phone Number
0040,2011  X       .  .  Order Callback Telecom Information
0040,2016  Z       .  .  Placer Order Number / Imaging Service Request
0040,2017  Z       .  .  Filler Order Number / Imaging Service Request
0040,2400  X       .  .  Imaging Service Request Comments
0040,3001  X       .  .  Confidentiality Constraint on Patient Data Description
0040,4005  X       C  .  Scheduled Procedure Step Start DateTime
0040,4008  X       C  .  Scheduled Procedure Step Expiration DateTime
0040,4010  X       C  .  Scheduled Procedure Step Modification DateTime
0040,4011  X       C  .  Expected Completion DateTime
0040,4023  U       .  .  Referenced General Purpose Scheduled Procedure Step Transaction UID
0040,4025  X       .  .  Scheduled Station Name Code Sequence
0040,4027  X       .  .  Scheduled Station Geographic Location Code Sequence
0040,4028  X       .  .  Performed Station Name Code Sequence
0040,4030  X       .  .  Performed Station Geographic Location Code Sequence
0040,4034  X       .  .  Scheduled Human Performers Sequence
0040,4035  X       .  .  Actual Human Performers Sequence
0040,4036  X       .  .  Human Performer's Organization
0040,4037  X       .  .  Human Performer's Name
0040,4050  X       C  .  Performed Procedure Step Start DateTime
0040,4051  X       C  .  Performed Procedure Step End DateTime
0040,4052  X       C  .  Procedure Step Cancellation DateTime
0040,A023  X       C  .  Findings Group Recording Date (Trial)
0040,A024  X       C  .  Findings Group Recording Time (Trial)
0040,A027  D       .  .  Verifying Organization
0040,A030  D       C  .  Verification DateTime
0040,A032  X/D     C  .  Observation DateTime
0040,A033  X       C  .  Observation Start DateTime
0040,A073  D       .  .  Verifying Observer Sequence
0040,A075  D       .  .  Verifying Observer Name
0040,A078  X       .  .  Author Observer Sequence
0040,A07A  X       .  .  Participant Sequence
0040,A07C  X       .  .  Custodial Organization Sequence
0040,A082  Z       C  .  Participation DateTime
0040,A088  Z       .  .  Verifying Observer Identification Code Sequence
0040,A110  X       C  .  Date of Document or Verbal Transaction (Trial)
0040,A112  X       C  .  Time of Document Creation or Verbal Transaction (Trial)
0040,A120  D       C  .  DateTime
0040,A121  D       C  .  Date
0040,A122  D       C  .  Time
0040,A123  D       .  .  Person Name
0040,A124  U       .  .  UID
0040,A13A  D       C  .  Referenced DateTime
0040,A171  U       .  .  Observation UID
0040,A172  U       .  .  Referenced Observation UID (Trial)
0040,A192  X       C  .  Observation Date (Trial)
0040,A193  X       C  .  Observation Time (Trial)
0040,A307  X       .  .  Current Observer (Trial)
0040,A352  X       .  .  Verbal Source (Trial)
0040,A353  X       .  .  Address (Trial)
0040,A354  X       .  .  Telephone Number (Trial)
0040,A358  X       .  .  Verbal Source Identifier Code Sequence (Trial)
0040,A402  U       .  .  Observation Subject UID (Trial)
0040,A730  D       .  .  Content Sequence
0040,DB06  X       C  .  Template Version
0040,DB07  X       C  .  Template Local Version
0040,DB0C  U       .  .  Template Extension Organization UID
0040,DB0D  U       .  .  Template Extension Creator UID
0040,E004  X       C  .  HL7 Document Effective Time
0042,0011  D       .  .  Encapsulated Document
0044,0004  X       C  .  Approval Status DateTime
0044,000B  X       C  .  Product Expiration DateTime
0044,0010  X       C  .  Substance Administration DateTime
0044,0104  D       C  .  Assertion DateTime
0044,0105  X       C  .  Assertion Expiration DateTime
0050,001B  X       .  .  Container Component ID
0050,0020  X       .  .  Device Description
0050,0021  X       .  .  Long Device Description
0062,0021  U       .  .  Tracking UID
0064,0003  U       .  .  Source Frame of Reference UID
0068,6226  D       C  .  Effective DateTime
0068,6270  D       C  .  Information Issue DateTime
006A,0003  D       .  .  Annotation Group UID
006A,0005  D       .  .  Annotation Group Label
006A,0006  X       .  .  Annotation Group Description
0070,0001  D       .  .  Graphic Annotation Sequence
0070,0082  X       C  .  Presentation Creation Date
0070,0083  X       C  .  Presentation Creation Time
0070,0084  Z/D     .  .  Content Creator's Name
0070,0086  X       .  .  Content Creator's Identification Code Sequence
0070,031A  U       .  .  Fiducial UID
0070,1101  U       .  .  Presentation Display Collection UID
0070,1102  U       .  .  Presentation Sequence Collection UID
0072,000A  D       C  .  Hanging Protocol Creation DateTime
0072,005E  D       .  .  Selector AE Value
0072,005F  D       .  K  Selector AS Value
0072,0061  D       C  .  Selector DA Value
0072,0063  D       C  .  Selector DT Value
0072,0065  D       .  .  Selector OB Value
0072,0066  D       .  .  Selector LO Value
0072,0068  D       .  .  Selector LT Value
0072,006A  D       .  .  Selector PN Value
0072,006B  D       C  .  Selector TM Value
0072,006C  D       .  .  Selector SH Value
0072,006D  D       .  .  Selector UN Value
0072,006E  D       .  .  Selector ST Value
0072,0070  D       .  .  Selector UT Value
0072,0071  D       .  .  Selector UR Value
0074,1234  X       .  .  Receiving AE
0074,1236  X       .  .  Requesting AE
0088,0140  U       .  .  Storage Media File-set UID
0088,0200  X       .  .  Icon Image Sequence
0088,0904  X       .  .  Topic Title
0088,0906  X       .  .  Topic Subject
0088,0910  X       .  .  Topic Author
0088,0912  X       .  .  Topic Keywords
0100,0420  X       C  .  SOP Authorization DateTime
0400,0100  U       .  .  Digital Signature UID
0400,0105  D       C  .  Digital Signature DateTime
0400,0115  D       .  .  Certificate of Signer
0400,0310  X       C  .  Certified Timestamp
0400,0402  X       .  .  Referenced Digital Signature Sequence
0400,0403  X       .  .  Referenced SOP Instance MAC Sequence
0400,0404  X       .  .  MAC
0400,0550  X       .  .  Modified Attributes Sequence
0400,0551  X       .  .  Nonconforming Modified Attributes Sequence
0400,0552  X       .  .  Nonconforming Data Element Value
0400,0561  X       .  .  Original Attributes Sequence
0400,0562  D       C  .  Attribute Modification DateTime
0400,0563  D       .  .  Modifying System
0400,0564  Z       .  .  Source of Previous Values
0400,0565  D       .  .  Reason for the Attribute Modification
0400,0600  X       .  .  Instance Origin Status
2030,0020  X       .  .  Text String
2100,0040  X       C  .  Creation Date
2100,0050  X       C  .  Creation Time
2100,0070  X       .  .  Originator
2100,0140  D       .  .  Destination AE
2200,0002  X/Z     .  .  Label Text
2200,0005  X/Z     .  .  Barcode Value
3002,0121  X       .  .  Position Acquisition Template Name
3002,0123  X       .  .  Position Acquisition Template Description
3006,0002  D       .  .  Structure Set Label
3006,0004  X       .  .  Structure Set Name
3006,0006  X       .  .  Structure Set Description
3006,0008  Z       C  .  Structure Set Date
3006,0009  Z       C  .  Structure Set Time
3006,0024  U       .  .  Referenced Frame of Reference UID
3006,0026  Z       .  .  ROI Name
3006,0028  X       .  .  ROI Description
3006,002D  X       C  .  ROI DateTime
3006,002E  X       C  .  ROI Observation DateTime
3006,0038  X       .  .  ROI Generation Description
3006,004D  X       .  .  ROI Creator Sequence
3006,004E  X       .  .  ROI Interpreter Sequence
3006,0085  X       .  .  ROI Observation Label
3006,0088  X       .  .  ROI Observation Description
3006,00A6  Z       .  .  ROI Interpreter
3006,00C2  U       .  .  Related Frame of Reference UID
3008,0024  D       C  .  Treatment Control Point Date
3008,0025  D       C  .  Treatment Control Point Time
3008,0054  X/D     C  .  First Treatment Date
3008,0056  X/D     C  .  Most Recent Treatment Date
3008,0105  X/Z     .  .  Source Serial Number
3008,0162  D       C  .  Safe Position Exit Date
3008,0164  D       C  .  Safe Position Exit Time
3008,0166  D       C  .  Safe Position Return Date
3008,0168  D       C  .  Safe Position Return Time
3008,0250  X/D     C  .  Treatment Date
3008,0251  X/D     C  .  Treatment Time
300A,0002  D       .  .  RT Plan Label
300A,0003  X       .  .  RT Plan Name
300A,0004  X       .  .  RT Plan Description
300A,0006  X/D     C  .  RT Plan Date
300A,0007  X/D     C  .  RT Plan Time
300A,000B  X       .  .  Treatment Sites
300A,000E  X       .  .  Prescription Description
300A,0013  U       .  .  Dose Reference UID
300A,0016  X       .  .  Dose Reference Description
300A,0072  X       .  .  Fraction Group Description
300A,0083  U       .  .  Referenced Dose Reference UID
300A,00B2  X/Z     .  .  Treatment Machine Name
300A,00C3  X       .  .  Beam Description
300A,00DD  X       .  .  Bolus Description
300A,0196  X       .  .  Fixation Device Description
300A,01A6  X       .  .  Shielding Device Description
300A,01B2  X       .  .  Setup Technique Description
300A,0216  X       .  .  Source Manufacturer
300A,022C  D       C  .  Source Strength Reference Date
300A,022E  D       C  .  Source Strength Reference Time
300A,02EB  X       .  .  Compensator Description
300A,0608  D       .  .  Treatment Position Group Label
300A,0609  U       .  .  Treatment Position Group UID
300A,0611  Z       .  .  RT Accessory Holder Slot ID
300A,0615  Z       .  .  RT Accessory Device Slot ID
300A,0619  D       .  .  Radiation Dose Identification Label
300A,0623  D       .  .  Radiation Dose In-Vivo Measurement Label
300A,062A  D       .  .  RT Tolerance Set Label
300A,0650  U       .  .  Patient Setup UID
300A,0676  X       .  .  Equipment Frame of Reference Description
300A,067C  D       .  .  Radiation Generation Mode Label
300A,067D  Z       .  .  Radiation Generation Mode Description
300A,0700  U       .  .  Treatment Session UID
300A,0734  D       .  .  Treatment Tolerance Violation Description
300A,0736  D       C  .  Treatment Tolerance Violation DateTime
300A,073A  D       C  .  Recorded RT Control Point DateTime
300A,0741  D       C  .  Interlock DateTime
300A,0742  D       .  .  Interlock Description
300A,0760  D       C  .  Override DateTime
300A,0783  D       .  .  Interlock Origin Description
300A,0785  U       .  .  Referenced Treatment Position Group UID
300A,078E  X       .  .  Patient Treatment Preparation Procedure Parameter Description
300A,0792  X       .  .  Patient Treatment Preparation Method Description
300A,0794  X       .  .  Patient Setup Photo Description
300A,079A  X       .  .  Displacement Reference Label
300C,0113  X       .  .  Reason for Omission Description
300C,0127  D       C  .  Beam Hold Transition DateTime
300E,0004  Z       C  .  Review Date
300E,0005  Z       C  .  Review Time
300E,0008  X/Z     .  .  Reviewer Name
3010,0006  U       .  .  Conceptual Volume UID
3010,000B  U       .  .  Referenced Conceptual Volume UID
3010,000F  Z       .  .  Conceptual Volume Combination Description
3010,0013  U       .  .  Constituent Conceptual Volume UID
3010,0015  U       .  .  Source Conceptual Volume UID
3010,0017  Z       .  .  Conceptual Volume Description
3010,001B  Z       .  .  Device Alternate Identifier
3010,002D  D       .  .  Device Label
3010,0031  U       .  .  Referenced Fiducials UID
3010,0033  D       .  .  User Content Label
3010,0034  D       .  .  User Content Long Label
3010,0035  D       .  .  Entity Label
3010,0036  X       .  .  Entity Name
3010,0037  X       .  .  Entity Description
3010,0038  D       .  .  Entity Long Label
3010,003B  U       .  .  RT Treatment Phase UID
3010,0043  Z       .  .  Manufacturer's Device Identifier
3010,004C  X/D     C  .  Intended Phase Start Date
3010,004D  X/D     C  .  Intended Phase End Date
3010,0054  D       .  .  RT Prescription Label
3010,0056  X/D     .  .  RT Treatment Approach Label
3010,005A  Z       .  .  RT Physician Intent Narrative
3010,005C  Z       .  .  Reason for Superseding
3010,0061  X       .  .  Prior Treatment Dose Description
3010,006E  U       .  .  Dosimetric Objective UID
3010,006F  U       .  .  Referenced Dosimetric Objective UID
3010,0077  X/D     .  .  Treatment Site
3010,007A  Z       .  .  Treatment Technique Notes
3010,007B  Z       .  .  Prescription Notes
3010,007F  Z       .  .  Fractionation Notes
3010,0081  Z       .  .  Prescription Notes Sequence
3010,0085  X       C  .  Intended Fraction Start Time
4000,0010  X       .  .  Arbitrary
4000,4000  X       .  .  Text Comments
4008,0040  X       .  .  Results ID
4008,0042  X       .  .  Results ID Issuer
4008,0100  X       C  .  Interpretation Recorded Date
4008,0101  X       C  .  Interpretation Recorded Time
4008,0102  X       .  .  Interpretation Recorder
4008,0108  X       C  .  Interpretation Transcription Date
4008,0109  X       C  .  Interpretation Transcription Time
4008,010A  X       .  .  Interpretation Transcriber
4008,010B  X       .  .  Interpretation Text
4008,010C  X       .  .  Interpretation Author
4008,0111  X       .  .  Interpretation Approver Sequence
4008,0112  X       C  .  Interpretation Approval Date
4008,0113  X       C  .  Interpretation Approval Time
4008,0114  X       .  .  Physician Approving Interpretation
4008,0115  X       .  .  Interpretation Diagnosis Description
4008,0118  X       .  .  Results Distribution List Sequence
4008,0119  X       .  .  Distribution Name
4008,011A  X       .  .  Distribution Address
4008,0200  X       .  .  Interpretation ID
4008,0202  X       .  .  Interpretation ID Issuer
4008,0300  X       .  .  Impressions
4008,4000  X       .  .  Results Comments
50xx,xxxx  X       .  .  Curve Data
60xx,3000  X       .  .  Overlay Data
60xx,4000  X       .  .  Overlay Comments
FFFA,FFFA  X       .  .  Digital Signatures Sequence
FFFC,FFFC  X       .  .  Data Set Trailing Padding
"""


@dataclass(frozen=True, slots=True)
class Row:
    """One row of Table E.1-1: the tag (``mask`` has 0 bits where the table says ``x``)."""

    tag: int
    mask: int
    basic: str
    modified_dates: bool
    patient_characteristics: str | None
    name: str


def _parse(text: str) -> tuple[Row, ...]:
    rows = []
    for line in text.strip().splitlines():
        tag_text, basic, dates, patient, name = line.split(maxsplit=4)
        digits = tag_text.replace(",", "")
        tag = int(digits.replace("x", "0"), 16)
        mask = int("".join("0" if c == "x" else "F" for c in digits), 16)
        rows.append(
            Row(
                tag=tag,
                mask=mask,
                basic=basic,
                modified_dates=dates == "C",
                patient_characteristics=None if patient == "." else patient,
                name=name,
            )
        )
    return tuple(rows)


ROWS: Final = _parse(_ROWS)
BY_TAG: Final[Mapping[int, Row]] = {r.tag: r for r in ROWS if r.mask == 0xFFFFFFFF}
REPEATING: Final = tuple(r for r in ROWS if r.mask != 0xFFFFFFFF)


def lookup(tag: int) -> Row | None:
    """The table row for ``tag`` (repeating groups included), or None if it is not listed."""
    row = BY_TAG.get(tag)
    if row is not None:
        return row
    for rep in REPEATING:
        if tag & rep.mask == rep.tag and (tag >> 16) % 2 == 0:
            return rep
    return None
