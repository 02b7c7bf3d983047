"""Reference tables of the synthetic hospital: places, names, diagnoses, wards, imaging findings.

Everything here is data. The latent model (`latent.py`) and the hospital (`hospital.py`) read these
tables; changing a prevalence or a ward is an edit here, not in the logic.
"""

from __future__ import annotations

from dataclasses import dataclass

ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
SNOMED = "http://snomed.info/sct"
DICOM = "http://dicom.nema.org/resources/ontology/DCM"
OMB_RACE = "urn:oid:2.16.840.1.113883.6.238"
NULL_FLAVOR = "http://terminology.hl7.org/CodeSystem/v3-NullFlavor"


@dataclass(frozen=True, slots=True)
class State:
    code: str
    population_millions: float  # 2020 census, rounded
    cities: tuple[str, ...]
    zip3_low: int  # first three ZIP digits used in the state (inclusive range)
    zip3_high: int


STATES: tuple[State, ...] = (
    State("AL", 5.02, ("Birmingham", "Montgomery"), 350, 369),
    State("AK", 0.73, ("Anchorage", "Fairbanks"), 995, 999),
    State("AZ", 7.15, ("Phoenix", "Tucson"), 850, 865),
    State("AR", 3.01, ("Little Rock", "Fayetteville"), 716, 729),
    State("CA", 39.54, ("Los Angeles", "San Diego", "San Jose", "Sacramento"), 900, 961),
    State("CO", 5.77, ("Denver", "Colorado Springs"), 800, 816),
    State("CT", 3.61, ("Bridgeport", "Hartford"), 60, 69),
    State("DE", 0.99, ("Wilmington", "Dover"), 197, 199),
    State("DC", 0.69, ("Washington",), 200, 205),
    State("FL", 21.54, ("Jacksonville", "Miami", "Tampa", "Orlando"), 320, 349),
    State("GA", 10.71, ("Atlanta", "Savannah"), 300, 319),
    State("HI", 1.46, ("Honolulu", "Hilo"), 967, 968),
    State("ID", 1.84, ("Boise", "Idaho Falls"), 832, 838),
    State("IL", 12.81, ("Chicago", "Springfield"), 600, 629),
    State("IN", 6.79, ("Indianapolis", "Fort Wayne"), 460, 479),
    State("IA", 3.19, ("Des Moines", "Cedar Rapids"), 500, 528),
    State("KS", 2.94, ("Wichita", "Topeka"), 660, 679),
    State("KY", 4.51, ("Louisville", "Lexington"), 400, 427),
    State("LA", 4.66, ("New Orleans", "Baton Rouge"), 700, 714),
    State("ME", 1.36, ("Portland", "Bangor"), 39, 49),
    State("MD", 6.18, ("Baltimore", "Annapolis"), 206, 219),
    State("MA", 7.03, ("Boston", "Worcester"), 10, 27),
    State("MI", 10.08, ("Detroit", "Grand Rapids"), 480, 499),
    State("MN", 5.71, ("Minneapolis", "Saint Paul"), 550, 567),
    State("MS", 2.96, ("Jackson", "Gulfport"), 386, 397),
    State("MO", 6.15, ("Kansas City", "St. Louis"), 630, 658),
    State("MT", 1.08, ("Billings", "Missoula"), 590, 599),
    State("NE", 1.96, ("Omaha", "Lincoln"), 680, 693),
    State("NV", 3.10, ("Las Vegas", "Reno"), 889, 898),
    State("NH", 1.38, ("Manchester", "Concord"), 30, 38),
    State("NJ", 9.29, ("Newark", "Jersey City"), 70, 89),
    State("NM", 2.12, ("Albuquerque", "Santa Fe"), 870, 884),
    State("NY", 20.20, ("New York", "Buffalo", "Rochester"), 100, 149),
    State("NC", 10.44, ("Charlotte", "Raleigh"), 270, 289),
    State("ND", 0.78, ("Fargo", "Bismarck"), 580, 588),
    State("OH", 11.80, ("Columbus", "Cleveland", "Cincinnati"), 430, 458),
    State("OK", 3.96, ("Oklahoma City", "Tulsa"), 730, 749),
    State("OR", 4.24, ("Portland", "Eugene"), 970, 979),
    State("PA", 13.00, ("Philadelphia", "Pittsburgh"), 150, 196),
    State("RI", 1.10, ("Providence", "Warwick"), 28, 29),
    State("SC", 5.12, ("Columbia", "Charleston"), 290, 299),
    State("SD", 0.89, ("Sioux Falls", "Rapid City"), 570, 577),
    State("TN", 6.91, ("Nashville", "Memphis"), 370, 385),
    State("TX", 29.15, ("Houston", "San Antonio", "Dallas", "Austin"), 750, 799),
    State("UT", 3.27, ("Salt Lake City", "Provo"), 840, 847),
    State("VT", 0.64, ("Burlington", "Montpelier"), 50, 59),
    State("VA", 8.63, ("Virginia Beach", "Richmond"), 220, 246),
    State("WA", 7.71, ("Seattle", "Spokane"), 980, 994),
    State("WV", 1.79, ("Charleston", "Huntington"), 247, 268),
    State("WI", 5.89, ("Milwaukee", "Madison"), 530, 549),
    State("WY", 0.58, ("Cheyenne", "Casper"), 820, 831),
)

FAMILY_NAMES: tuple[str, ...] = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez",
    "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor", "Moore",
    "Jackson", "Martin", "Lee", "Perez", "Thompson", "White", "Harris", "Sanchez", "Clark", "Ramirez",
    "Lewis", "Robinson", "Walker", "Young", "Allen", "King", "Wright", "Scott", "Torres", "Nguyen",
    "Hill", "Flores", "Green", "Adams", "Nelson", "Baker", "Hall", "Rivera", "Campbell", "Mitchell",
    "Carter", "Roberts", "Kim", "Patel", "Chen", "Okafor", "Begay", "Kealoha", "Novak", "Schmidt",
    "O'Brien", "Murphy",
)
GIVEN_FEMALE: tuple[str, ...] = (
    "Mary", "Patricia", "Jennifer", "Linda", "Elizabeth", "Barbara", "Susan", "Jessica", "Sarah",
    "Karen", "Lisa", "Nancy", "Betty", "Margaret", "Sandra", "Ashley", "Dorothy", "Kimberly", "Emily",
    "Donna", "Michelle", "Carol", "Amanda", "Melissa", "Deborah", "Stephanie", "Rebecca", "Sharon",
    "Laura", "Cynthia", "Maria", "Rosa", "Mei", "Aisha", "Priya", "Ana", "Grace", "Ruth", "Helen", "Joan",
)
GIVEN_MALE: tuple[str, ...] = (
    "James", "Robert", "John", "Michael", "David", "William", "Richard", "Joseph", "Thomas",
    "Charles", "Christopher", "Daniel", "Matthew", "Anthony", "Mark", "Donald", "Steven", "Paul",
    "Andrew", "Joshua", "Kenneth", "Kevin", "Brian", "George", "Timothy", "Ronald", "Edward", "Jason",
    "Jeffrey", "Ryan", "Jose", "Luis", "Wei", "Omar", "Raj", "Juan", "Samuel", "Frank", "Harold", "Walter",
)
STREETS: tuple[str, ...] = (
    "Main", "Oak", "Pine", "Maple", "Cedar", "Elm", "Washington", "Lake", "Hill", "Park", "Walnut",
    "Sunset", "Lincoln", "Jackson", "Church", "River", "Highland", "Meadow", "Forest", "Franklin",
)
STREET_SUFFIXES: tuple[str, ...] = ("St", "Ave", "Rd", "Dr", "Ln", "Blvd", "Ct", "Way")

# US Core race (OMB category) and its share among inpatients; the last entry carries no OMB category.
RACES: tuple[tuple[str | None, str, float], ...] = (
    ("2106-3", "White", 0.69),
    ("2054-5", "Black or African American", 0.13),
    ("2028-9", "Asian", 0.06),
    ("1002-5", "American Indian or Alaska Native", 0.012),
    ("2076-8", "Native Hawaiian or Other Pacific Islander", 0.004),
    (None, "Unknown", 0.104),
)
ETHNICITIES: tuple[tuple[str, str, float], ...] = (
    ("2135-2", "Hispanic or Latino", 0.17),
    ("2186-5", "Not Hispanic or Latino", 0.83),
)


@dataclass(frozen=True, slots=True)
class Comorbidity:
    """A chronic condition. Prevalence is at age 65; the odds multiply by `odds_per_decade`."""

    key: str
    code: str
    display: str
    charlson: int  # weight in the Charlson comorbidity index (0: not a Charlson condition)
    prevalence_65: float
    odds_per_decade: float


COMORBIDITIES: tuple[Comorbidity, ...] = (
    Comorbidity("diabetes", "E11.9", "Type 2 diabetes mellitus without complications", 1, 0.25, 1.15),
    Comorbidity("heart_failure", "I50.9", "Heart failure, unspecified", 1, 0.11, 1.6),
    Comorbidity("copd", "J44.9", "Chronic obstructive pulmonary disease, unspecified", 1, 0.11, 1.3),
    Comorbidity("ckd", "N18.3", "Chronic kidney disease, stage 3 (moderate)", 2, 0.12, 1.5),
    Comorbidity("cancer", "C34.90", "Malignant neoplasm of unspecified part of unspecified bronchus or lung",
                2, 0.05, 1.3),
    Comorbidity("dementia", "F03.90", "Unspecified dementia without behavioral disturbance", 1, 0.05, 2.3),
    Comorbidity("mi_history", "I25.2", "Old myocardial infarction", 1, 0.09, 1.4),
    Comorbidity("liver", "K70.30", "Alcoholic cirrhosis of liver without ascites", 1, 0.03, 1.0),
    Comorbidity("stroke_history", "I69.30", "Unspecified sequelae of cerebral infarction", 1, 0.05, 1.5),
    Comorbidity("pvd", "I73.9", "Peripheral vascular disease, unspecified", 1, 0.05, 1.4),
    Comorbidity("hypertension", "I10", "Essential (primary) hypertension", 0, 0.45, 1.3),
    Comorbidity("atrial_fibrillation", "I48.91", "Unspecified atrial fibrillation", 0, 0.11, 1.7),
)

# Wards. The ICU is reached only by transfer.
MEDICAL, SURGICAL, CARDIOLOGY, RESPIRATORY, ICU, EMERGENCY = (
    "Medical Ward 4W", "Surgical Ward 5E", "Cardiology 3N", "Respiratory 6S", "ICU", "Emergency Department",
)
BED_PREFIX: dict[str, str] = {
    MEDICAL: "4W", SURGICAL: "5E", CARDIOLOGY: "3N", RESPIRATORY: "6S", ICU: "ICU", EMERGENCY: "ED",
}
BEDS_PER_UNIT: dict[str, int] = {MEDICAL: 32, SURGICAL: 28, CARDIOLOGY: 24, RESPIRATORY: 24, ICU: 16,
                                 EMERGENCY: 40}


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """An admission diagnosis and how it shapes the admission.

    `acuity` is the mean latent severity at admission, `setpoint` shifts the severity the course
    settles to, `deteriorate_logit` shifts the log-odds of being on a deteriorating course.
    `respiratory`, `circulatory`, `inflammatory` weight how severity shows in each organ system.
    """

    code: str
    display: str
    weight: float  # relative frequency among admissions
    unit: str
    priority: str  # v3-ActPriority: EM emergency, UR urgent, EL elective
    acuity: float
    setpoint: float
    deteriorate_logit: float
    respiratory: float
    circulatory: float
    inflammatory: float
    imaging_at_admission: float  # probability of chest imaging on arrival
    comorbidity_link: str | None = None  # a comorbidity that makes this diagnosis likelier


COVID_CODE = "U07.1"

DIAGNOSES: tuple[Diagnosis, ...] = (
    Diagnosis("J18.9", "Pneumonia, unspecified organism", 14, RESPIRATORY, "EM",
              1.2, 0.2, 0.3, 1.0, 0.3, 0.8, 0.9),
    Diagnosis(COVID_CODE, "COVID-19", 6, RESPIRATORY, "EM", 1.2, 0.3, 0.5, 1.1, 0.2, 0.6, 0.9),
    Diagnosis("J44.1", "Chronic obstructive pulmonary disease with (acute) exacerbation", 6, RESPIRATORY,
              "EM", 1.0, 0.1, 0.1, 1.0, 0.2, 0.3, 0.8, "copd"),
    Diagnosis("A41.9", "Sepsis, unspecified organism", 9, MEDICAL, "EM", 1.6, 0.4, 0.8, 0.3, 1.0, 1.0, 0.5),
    Diagnosis("N39.0", "Urinary tract infection, site not specified", 8, MEDICAL, "EM",
              0.8, -0.1, -0.2, 0.1, 0.4, 0.8, 0.15),
    Diagnosis("N17.9", "Acute kidney failure, unspecified", 5, MEDICAL, "EM",
              1.0, 0.1, 0.1, 0.1, 0.8, 0.2, 0.1, "ckd"),
    Diagnosis("K92.2", "Gastrointestinal hemorrhage, unspecified", 5, MEDICAL, "EM",
              1.1, 0.1, 0.2, 0.0, 1.0, 0.1, 0.1, "liver"),
    Diagnosis("K85.90", "Acute pancreatitis without necrosis or infection, unspecified", 4, SURGICAL, "EM",
              1.1, 0.0, 0.0, 0.3, 0.6, 0.8, 0.2),
    Diagnosis("I50.21", "Acute systolic (congestive) heart failure", 8, CARDIOLOGY, "EM",
              1.1, 0.1, 0.2, 0.8, 0.7, 0.0, 0.85, "heart_failure"),
    Diagnosis("I21.4", "Non-ST elevation (NSTEMI) myocardial infarction", 6, CARDIOLOGY, "EM",
              0.9, 0.0, 0.1, 0.2, 0.9, 0.1, 0.5, "mi_history"),
    Diagnosis("I63.9", "Cerebral infarction, unspecified", 5, MEDICAL, "EM",
              1.0, 0.0, 0.1, 0.2, 0.5, 0.1, 0.2),
    Diagnosis("S72.001A", "Fracture of unspecified part of neck of right femur, initial encounter for closed "
              "fracture", 5, SURGICAL, "UR", 0.8, -0.1, 0.0, 0.2, 0.5, 0.3, 0.3),
    Diagnosis("K35.80", "Unspecified acute appendicitis", 4, SURGICAL, "UR",
              0.6, -0.6, -1.0, 0.1, 0.3, 0.7, 0.05),
    Diagnosis("M17.11", "Unilateral primary osteoarthritis, right knee", 9, SURGICAL, "EL",
              0.3, -0.8, -1.5, 0.1, 0.3, 0.2, 0.05),
)

# Conditions recorded when a patient is moved to the ICU, by the organ system that failed most.
ICU_CONDITIONS: dict[str, tuple[str, str]] = {
    "respiratory": ("J96.00", "Acute respiratory failure, unspecified whether with hypoxia or hypercapnia"),
    "circulatory": ("R65.21", "Severe sepsis with septic shock"),
    "cardiac": ("R57.0", "Cardiogenic shock"),
}

PRIORITY_DISPLAY = {"EM": "emergency", "UR": "urgent", "EL": "elective"}
ADMIT_SOURCE = {"EM": ("emd", "From accident/emergency department"),
                "UR": ("emd", "From accident/emergency department"),
                "EL": ("outp", "From outpatient department")}
DISPOSITIONS = {
    "home": "Home", "snf": "Skilled nursing facility", "rehab": "Rehabilitation",
    "other-hcf": "Other healthcare facility", "exp": "Expired",
}


@dataclass(frozen=True, slots=True)
class Finding:
    conclusion: str
    codes: tuple[tuple[str, str], ...]  # SNOMED CT (code, display)


NORMAL = Finding("No acute cardiopulmonary process.", (("281900007", "No abnormality detected"),))
ATELECTASIS = Finding("Mild bibasilar atelectasis. No focal consolidation.", (("46621007", "Atelectasis"),))
CONSOLIDATION = Finding("Right lower lobe consolidation consistent with pneumonia.",
                        (("233604007", "Pneumonia"),))
CONSOLIDATION_EFFUSION = Finding(
    "Right lower lobe consolidation consistent with pneumonia; small right pleural effusion.",
    (("233604007", "Pneumonia"), ("60046008", "Pleural effusion")),
)
BILATERAL = Finding("Bilateral infiltrates consistent with multifocal pneumonia; ARDS not excluded.",
                    (("233604007", "Pneumonia"), ("67782005", "Acute respiratory distress syndrome")))
COVID_PNEUMONIA = Finding("Bilateral peripheral ground-glass opacities consistent with COVID-19 pneumonia.",
                          (("840539006", "COVID-19"),))
EDEMA = Finding("Cardiomegaly with interstitial pulmonary edema.",
                (("8186001", "Cardiomegaly"), ("19242006", "Pulmonary edema")))

# Imaging procedures: LOINC code and display, DICOM modality, description, series (description, instances)
CHEST_XRAY = ("36643-5", "XR Chest 2 Views", "DX", "Chest X-ray", (("PA and lateral", 2),))
CHEST_CT = ("24627-2", "CT Chest", "CT", "CT chest", (("Axial soft tissue 1.25 mm", 240),
                                                       ("Axial lung 1.25 mm", 240)))
