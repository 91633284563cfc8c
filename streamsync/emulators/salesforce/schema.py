"""Object and field definitions of the emulated org: Lead, Contact, Account, Opportunity,
OpportunityContactRole, Campaign, CampaignMember, User, Group."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Field types, as describe reports them.
STRING_TYPES = frozenset({"string", "email", "phone", "picklist", "textarea", "url", "combobox"})
ID_TYPES = frozenset({"id", "reference"})


@dataclass(frozen=True)
class Field:
    """One field of an sObject."""

    name: str
    type: str
    label: str = ""
    length: int = 0
    nillable: bool = True
    createable: bool = True
    updateable: bool = True
    reference_to: tuple[str, ...] = ()
    relationship_name: str | None = None
    picklist: tuple[str, ...] = ()
    # Compound fields (Name, addresses) are computed from their components and not stored.
    components: tuple[tuple[str, str], ...] = ()  # (event/REST component key, stored field name)
    compound_of: str | None = None  # for a component: the compound field it belongs to
    # A read-only copy of a field of the record a reference points to, read through it and not
    # stored: (reference field, ((target object, its field), ...)).
    via: tuple[str, tuple[tuple[str, str], ...]] | None = None
    # A read-only count of live child records, not stored: (child object, its reference field
    # to this record, which children count: see ROLLUPS).
    rollup: tuple[str, str, str] | None = None
    slot: int = -1  # index in the stored row, -1 for compound fields

    @property
    def custom(self) -> bool:
        return self.name.endswith("__c")

    @property
    def is_compound(self) -> bool:
        return bool(self.components)

    @property
    def is_stored(self) -> bool:
        return not self.components and self.via is None and self.rollup is None


@dataclass
class SObject:
    """An sObject type: its fields in slot order and lookups by name."""

    name: str
    key_prefix: str
    label: str
    fields: list[Field]
    by_lower: dict[str, Field] = field(default_factory=dict)
    relationships: dict[str, Field] = field(default_factory=dict)  # lower relationship name
    stored: list[Field] = field(default_factory=list)

    def __post_init__(self) -> None:
        slot = 0
        rebuilt: list[Field] = []
        for f in self.fields:
            if f.is_stored:
                f = Field(**{**f.__dict__, "slot": slot})
                slot += 1
                self.stored.append(f)
            rebuilt.append(f)
        self.fields = rebuilt
        self.by_lower = {f.name.lower(): f for f in self.fields}
        self.relationships = {
            f.relationship_name.lower(): f for f in self.fields if f.relationship_name
        }

    def slot(self, name: str) -> int:
        return self.by_lower[name.lower()].slot

    def get(self, name: str) -> Field | None:
        return self.by_lower.get(name.lower())

    @property
    def width(self) -> int:
        return len(self.stored)


def _label(name: str) -> str:
    base = name[:-3] if name.endswith("__c") else name
    out = ""
    for i, ch in enumerate(base.replace("_", " ")):
        if ch.isupper() and i and base[i - 1].islower():
            out += " "
        out += ch
    return out


def _f(name: str, ftype: str, **kw: Any) -> Field:
    lengths = {"string": 255, "email": 80, "phone": 40, "picklist": 255, "textarea": 255,
               "url": 255, "id": 18, "reference": 18}
    kw.setdefault("length", lengths.get(ftype, 0))
    return Field(name=name, type=ftype, label=kw.pop("label", _label(name)), **kw)


def _system(owner_to: tuple[str, ...] = ("User",)) -> list[Field]:
    return [
        _f("OwnerId", "reference", reference_to=owner_to, relationship_name="Owner",
           nillable=False),
        _f("CreatedDate", "datetime", createable=False, updateable=False, nillable=False),
        _f("CreatedById", "reference", reference_to=("User",), relationship_name="CreatedBy",
           createable=False, updateable=False, nillable=False),
        _f("LastModifiedDate", "datetime", createable=False, updateable=False, nillable=False),
        _f("LastModifiedById", "reference", reference_to=("User",),
           relationship_name="LastModifiedBy", createable=False, updateable=False,
           nillable=False),
        _f("SystemModstamp", "datetime", createable=False, updateable=False, nillable=False),
    ]


def _head() -> list[Field]:
    return [
        _f("Id", "id", nillable=False, createable=False, updateable=False),
        _f("IsDeleted", "boolean", nillable=False, createable=False, updateable=False),
    ]


def _address(prefix: str, compound: str) -> list[Field]:
    parts = (("Street", "textarea"), ("City", "string"), ("State", "string"),
             ("PostalCode", "string"), ("Country", "string"))
    comps = tuple((p, prefix + p) for p, _ in parts)
    return [_f(prefix + p, t, compound_of=compound) for p, t in parts] + [
        _f(compound, "address", components=comps, createable=False, updateable=False)
    ]


def _consent() -> list[Field]:
    """The opt-out flags of Lead and Contact (booleans, false on create)."""
    return [
        _f("HasOptedOutOfEmail", "boolean", nillable=False, label="Email Opt Out"),
        _f("HasOptedOutOfFax", "boolean", nillable=False, label="Fax Opt Out"),
        _f("DoNotCall", "boolean", nillable=False, label="Do Not Call"),
    ]


def _person_name() -> list[Field]:
    return [
        _f("Salutation", "picklist", compound_of="Name",
           picklist=("Mr.", "Ms.", "Mrs.", "Dr.", "Prof.")),
        _f("FirstName", "string", length=40, compound_of="Name"),
        _f("LastName", "string", length=80, nillable=False, compound_of="Name"),
        _f("Name", "string", length=121, createable=False, updateable=False,
           components=(("Salutation", "Salutation"), ("FirstName", "FirstName"),
                       ("LastName", "LastName"))),
    ]


LEAD_STATUSES = ("Open - Not Contacted", "Working - Contacted", "Closed - Converted",
                 "Closed - Not Converted")
LEAD_SOURCES = ("Web", "Phone Inquiry", "Partner Referral", "Purchased List", "Other")
INDUSTRIES = ("Agriculture", "Banking", "Biotechnology", "Education", "Energy", "Finance",
              "Healthcare", "Manufacturing", "Media", "Retail", "Technology", "Utilities")
LIFECYCLE = ("Subscriber", "Lead", "MQL", "SQL", "Opportunity", "Customer")


def _lead() -> SObject:
    fields = _head() + _person_name() + [
        _f("Title", "string", length=128),
        _f("Company", "string", nillable=False),
        _f("Email", "email"),
        _f("Phone", "phone"),
        _f("MobilePhone", "phone"),
        *_address("", "Address"),
        _f("Website", "url"),
        _f("Status", "picklist", nillable=False, picklist=LEAD_STATUSES),
        _f("LeadSource", "picklist", picklist=LEAD_SOURCES),
        _f("Industry", "picklist", picklist=INDUSTRIES),
        _f("Rating", "picklist", picklist=("Hot", "Warm", "Cold")),
        _f("AnnualRevenue", "currency"),
        _f("NumberOfEmployees", "int"),
        *_consent(),
        _f("IsConverted", "boolean", nillable=False, createable=False, updateable=False),
        _f("ConvertedDate", "date", createable=False, updateable=False),
        _f("ConvertedAccountId", "reference", reference_to=("Account",),
           relationship_name="ConvertedAccount", createable=False, updateable=False),
        _f("ConvertedContactId", "reference", reference_to=("Contact",),
           relationship_name="ConvertedContact", createable=False, updateable=False),
        _f("ConvertedOpportunityId", "reference", reference_to=("Opportunity",),
           relationship_name="ConvertedOpportunity", createable=False, updateable=False),
        *_system(("User", "Group")),
        _f("Lifecycle_Stage__c", "picklist", picklist=LIFECYCLE),
        _f("Lead_Score__c", "double"),
        _f("Marketing_Opt_In__c", "boolean", nillable=False),
        _f("External_Id__c", "string", length=64),
    ]
    return SObject("Lead", "00Q", "Lead", fields)


def _contact() -> SObject:
    fields = _head() + [
        _f("AccountId", "reference", reference_to=("Account",), relationship_name="Account"),
        *_person_name(),
        _f("Title", "string", length=128),
        _f("Department", "string", length=80),
        _f("Email", "email"),
        _f("Phone", "phone"),
        _f("MobilePhone", "phone"),
        *_address("Mailing", "MailingAddress"),
        _f("LeadSource", "picklist", picklist=LEAD_SOURCES),
        _f("Birthdate", "date"),
        *_consent(),
        *_system(),
        _f("Lifecycle_Stage__c", "picklist", picklist=LIFECYCLE),
        _f("Preferred_Language__c", "picklist", picklist=("en", "de", "fr", "es", "ja")),
        _f("External_Id__c", "string", length=64),
    ]
    return SObject("Contact", "003", "Contact", fields)


def _account() -> SObject:
    fields = _head() + [
        _f("Name", "string", nillable=False),
        _f("Type", "picklist", picklist=("Prospect", "Customer - Direct", "Customer - Channel",
                                         "Partner", "Other")),
        _f("Industry", "picklist", picklist=INDUSTRIES),
        _f("AnnualRevenue", "currency"),
        _f("NumberOfEmployees", "int"),
        _f("Phone", "phone"),
        _f("Website", "url"),
        *_address("Billing", "BillingAddress"),
        *_system(),
        _f("Tier__c", "picklist", picklist=("Gold", "Silver", "Bronze")),
        _f("Region__c", "picklist", picklist=("AMER", "EMEA", "APAC")),
        _f("Customer_Since__c", "date"),
    ]
    return SObject("Account", "001", "Account", fields)


# Salesforce's default sales stages: (name, default probability %, forecast category,
# closed, won). IsClosed, IsWon, Probability and ForecastCategoryName follow the stage.
STAGE_INFO: dict[str, tuple[float, str, bool, bool]] = {
    "Prospecting": (10.0, "Pipeline", False, False),
    "Qualification": (10.0, "Pipeline", False, False),
    "Needs Analysis": (20.0, "Pipeline", False, False),
    "Value Proposition": (50.0, "Pipeline", False, False),
    "Id. Decision Makers": (60.0, "Pipeline", False, False),
    "Perception Analysis": (70.0, "Pipeline", False, False),
    "Proposal/Price Quote": (75.0, "Pipeline", False, False),
    "Negotiation/Review": (90.0, "Pipeline", False, False),
    "Closed Won": (100.0, "Closed", True, True),
    "Closed Lost": (0.0, "Omitted", True, False),
}
OPPORTUNITY_STAGES = tuple(STAGE_INFO)
FORECAST_CATEGORIES = ("Omitted", "Pipeline", "BestCase", "Commit", "Closed")
OPPORTUNITY_TYPES = ("Existing Customer - Upgrade", "Existing Customer - Replacement",
                     "Existing Customer - Downgrade", "New Customer")


def _opportunity() -> SObject:
    fields = _head() + [
        _f("AccountId", "reference", reference_to=("Account",), relationship_name="Account"),
        _f("Name", "string", length=120, nillable=False),
        _f("StageName", "picklist", nillable=False, picklist=OPPORTUNITY_STAGES, label="Stage"),
        _f("CloseDate", "date", nillable=False),
        _f("Amount", "currency"),
        _f("Probability", "percent", label="Probability (%)"),
        _f("ForecastCategoryName", "picklist", picklist=FORECAST_CATEGORIES,
           label="Forecast Category"),
        _f("IsClosed", "boolean", nillable=False, createable=False, updateable=False,
           label="Closed"),
        _f("IsWon", "boolean", nillable=False, createable=False, updateable=False, label="Won"),
        _f("Type", "picklist", picklist=OPPORTUNITY_TYPES, label="Opportunity Type"),
        _f("NextStep", "string", length=255),
        _f("Description", "textarea", length=32000),
        _f("LeadSource", "picklist", picklist=LEAD_SOURCES),
        _f("CampaignId", "reference", reference_to=("Campaign",), relationship_name="Campaign"),
        *_system(),
    ]
    return SObject("Opportunity", "006", "Opportunity", fields)


CONTACT_ROLES = ("Business User", "Decision Maker", "Economic Buyer", "Economic Decision Maker",
                 "Evaluator", "Executive Sponsor", "Influencer", "Technical Buyer", "Other")


def _opportunity_contact_role() -> SObject:
    fields = _head() + [
        _f("OpportunityId", "reference", reference_to=("Opportunity",),
           relationship_name="Opportunity", nillable=False, updateable=False),
        _f("ContactId", "reference", reference_to=("Contact",), relationship_name="Contact",
           nillable=False),
        _f("Role", "picklist", picklist=CONTACT_ROLES),
        _f("IsPrimary", "boolean", nillable=False, label="Primary"),
        *[f for f in _system() if f.name != "OwnerId"],
    ]
    return SObject("OpportunityContactRole", "00K", "Opportunity Contact Role", fields)


CAMPAIGN_TYPES = ("Advertisement", "Banner Ads", "Conference", "Direct Mail", "Email",
                  "Partners", "Public Relations", "Referral Program", "Telemarketing",
                  "Trade Show", "Webinar", "Other")
CAMPAIGN_STATUSES = ("Planned", "In Progress", "Completed", "Aborted")
# The two member statuses every new campaign gets (CampaignMemberStatus rows): the first is
# the default, "Responded" counts as a response.
MEMBER_STATUSES = ("Sent", "Responded")
RESPONDED_STATUSES = frozenset({"Responded"})


def _campaign() -> SObject:
    fields = _head() + [
        _f("Name", "string", length=80, nillable=False),
        _f("ParentId", "reference", reference_to=("Campaign",), relationship_name="Parent",
           label="Parent Campaign ID"),
        _f("Type", "picklist", picklist=CAMPAIGN_TYPES),
        _f("Status", "picklist", picklist=CAMPAIGN_STATUSES),
        _f("StartDate", "date"),
        _f("EndDate", "date"),
        _f("IsActive", "boolean", nillable=False, label="Active"),
        _f("Description", "textarea", length=32000),
        _f("BudgetedCost", "currency"),
        _f("ActualCost", "currency"),
        _f("ExpectedRevenue", "currency"),
        _f("ExpectedResponse", "percent", label="Expected Response (%)"),
        _f("NumberSent", "double", label="Num Sent"),
        *[_f(name, "int", nillable=False, createable=False, updateable=False, rollup=rollup)
          for name, rollup in (
              ("NumberOfLeads", ("CampaignMember", "CampaignId", "lead")),
              ("NumberOfConvertedLeads", ("CampaignMember", "CampaignId", "converted")),
              ("NumberOfContacts", ("CampaignMember", "CampaignId", "contact")),
              ("NumberOfResponses", ("CampaignMember", "CampaignId", "responded")),
              ("NumberOfOpportunities", ("Opportunity", "CampaignId", "any")),
              ("NumberOfWonOpportunities", ("Opportunity", "CampaignId", "won")))],
        *_system(),
    ]
    return SObject("Campaign", "701", "Campaign", fields)


# Which live children a rollup counts: (field that must be set or true, field that must be too).
ROLLUPS: dict[str, tuple[str, ...]] = {
    "lead": ("LeadId",), "converted": ("LeadId", "ContactId"), "contact": ("ContactId",),
    "responded": ("HasResponded",), "any": (), "won": ("IsWon",),
}


def _person_copy(name: str, ftype: str, lead_field: str = "", contact_field: str = "",
                 **kw: Any) -> Field:
    """A CampaignMember field showing its Lead's or Contact's value (read-only)."""
    targets = (("Lead", lead_field or name), ("Contact", contact_field or name))
    return _f(name, ftype, createable=False, updateable=False,
              via=("LeadOrContactId", targets), **kw)


def _campaign_member() -> SObject:
    fields = _head() + [
        _f("CampaignId", "reference", reference_to=("Campaign",), relationship_name="Campaign",
           nillable=False, updateable=False, label="Campaign ID"),
        _f("LeadId", "reference", reference_to=("Lead",), relationship_name="Lead",
           updateable=False, label="Lead ID"),
        _f("ContactId", "reference", reference_to=("Contact",), relationship_name="Contact",
           updateable=False, label="Contact ID"),
        _f("LeadOrContactId", "reference", reference_to=("Lead", "Contact"), createable=False,
           updateable=False, label="Lead/Contact ID"),
        _f("Status", "picklist", length=40, picklist=MEMBER_STATUSES),
        _f("HasResponded", "boolean", nillable=False, createable=False, updateable=False,
           label="Responded"),
        _f("FirstRespondedDate", "date", createable=False, updateable=False),
        _person_copy("FirstName", "string", length=40),
        _person_copy("LastName", "string", length=80),
        _person_copy("Name", "string", length=121),
        _person_copy("Title", "string", length=128),
        _person_copy("Email", "email"),
        _person_copy("Phone", "phone"),
        _person_copy("MobilePhone", "phone"),
        _person_copy("City", "string", contact_field="MailingCity", length=40),
        _person_copy("Country", "string", contact_field="MailingCountry", length=80),
        _person_copy("LeadSource", "picklist", picklist=LEAD_SOURCES),
        _person_copy("HasOptedOutOfEmail", "boolean", nillable=False, label="Email Opt Out"),
        _person_copy("HasOptedOutOfFax", "boolean", nillable=False, label="Fax Opt Out"),
        _person_copy("DoNotCall", "boolean", nillable=False, label="Do Not Call"),
        *[f for f in _system() if f.name != "OwnerId"],
    ]
    return SObject("CampaignMember", "00v", "Campaign Member", fields)


def _user() -> SObject:
    fields = _head()[:1] + [
        _f("Username", "string", nillable=False),
        _f("FirstName", "string", length=40, compound_of="Name"),
        _f("LastName", "string", length=80, nillable=False, compound_of="Name"),
        _f("Name", "string", length=121, createable=False, updateable=False,
           components=(("FirstName", "FirstName"), ("LastName", "LastName"))),
        _f("Alias", "string", length=8),
        _f("Email", "email", nillable=False),
        _f("Title", "string", length=80),
        _f("IsActive", "boolean", nillable=False),
        _f("CreatedDate", "datetime", createable=False, updateable=False, nillable=False),
        _f("LastModifiedDate", "datetime", createable=False, updateable=False, nillable=False),
        _f("SystemModstamp", "datetime", createable=False, updateable=False, nillable=False),
    ]
    return SObject("User", "005", "User", fields)


def _group() -> SObject:
    fields = [
        _f("Id", "id", nillable=False, createable=False, updateable=False),
        _f("Name", "string", length=40, nillable=False),
        _f("DeveloperName", "string", length=80),
        _f("Type", "picklist", picklist=("Queue", "Regular")),
        _f("Email", "email"),
        _f("CreatedDate", "datetime", createable=False, updateable=False, nillable=False),
        _f("LastModifiedDate", "datetime", createable=False, updateable=False, nillable=False),
        _f("SystemModstamp", "datetime", createable=False, updateable=False, nillable=False),
    ]
    return SObject("Group", "00G", "Group", fields)


# The polymorphic "Name" object SOQL uses for Owner on Lead (User or queue).
NAME_FIELDS = frozenset({"id", "name", "email", "firstname", "lastname", "alias", "title",
                         "username", "type", "isactive"})


def build_schema() -> dict[str, SObject]:
    """All emulated objects by API name."""
    objs = [_lead(), _contact(), _account(), _opportunity(), _opportunity_contact_role(),
            _campaign(), _campaign_member(), _user(), _group()]
    return {o.name: o for o in objs}


SCHEMA: dict[str, SObject] = build_schema()
SCHEMA_LOWER: dict[str, SObject] = {k.lower(): v for k, v in SCHEMA.items()}
BY_PREFIX: dict[str, SObject] = {o.key_prefix: o for o in SCHEMA.values()}

EXTERNAL_ID_FIELDS = frozenset({"External_Id__c"})
# Emulated objects for which Salesforce publishes change events (Change Event Object Support;
# Group has none), and the ones selected for CDC in this org unless configured otherwise.
CDC_SUPPORTED = frozenset({"Lead", "Contact", "Account", "Opportunity",
                           "OpportunityContactRole", "Campaign", "CampaignMember", "User"})
DEFAULT_CDC_ENTITIES = ("Lead", "Contact", "Account", "Opportunity", "OpportunityContactRole",
                        "Campaign", "CampaignMember")
# Set by the server when a create leaves them out (booleans are defaulted too).
DEFAULTED_ON_CREATE = frozenset({"OwnerId", "CreatedDate", "CreatedById", "LastModifiedDate",
                                 "LastModifiedById", "SystemModstamp", "Status"})
CDC_EXCLUDED = frozenset({"Id", "IsDeleted", "SystemModstamp"})


def describe(obj: SObject, version: str) -> dict[str, Any]:
    """The describe reply for one object."""
    base = f"/services/data/v{version}/sobjects/{obj.name}"
    return {
        "name": obj.name,
        "label": obj.label,
        "labelPlural": obj.label + "s",
        "keyPrefix": obj.key_prefix,
        "custom": False,
        "createable": obj.name not in ("User", "Group"),
        "updateable": True,
        "deletable": obj.name not in ("User", "Group"),
        "undeletable": obj.name not in ("User", "Group"),
        "queryable": True,
        "retrieveable": True,
        "searchable": True,
        "triggerable": True,
        "urls": {"sobject": base, "describe": base + "/describe",
                 "rowTemplate": base + "/{ID}"},
        "fields": [_describe_field(f) for f in obj.fields],
    }


def _describe_field(f: Field) -> dict[str, Any]:
    soap = {"id": "tns:ID", "reference": "tns:ID", "boolean": "xsd:boolean",
            "datetime": "xsd:dateTime", "date": "xsd:date", "double": "xsd:double",
            "currency": "xsd:double", "percent": "xsd:double", "int": "xsd:int",
            "address": "urn:address"}
    return {
        "name": f.name,
        "label": f.label,
        "type": f.type,
        "soapType": soap.get(f.type, "xsd:string"),
        "length": f.length,
        "custom": f.custom,
        "nillable": f.nillable,
        "defaultedOnCreate": f.type == "boolean" or f.name in DEFAULTED_ON_CREATE,
        "createable": f.createable,
        "updateable": f.updateable,
        "filterable": not f.is_compound,
        "sortable": not f.is_compound,
        "calculated": False,
        "compoundFieldName": f.compound_of,
        "referenceTo": list(f.reference_to),
        "relationshipName": f.relationship_name,
        "polymorphicForeignKey": len(f.reference_to) > 1,
        "externalId": f.name in EXTERNAL_ID_FIELDS,
        "unique": f.name in EXTERNAL_ID_FIELDS,
        "picklistValues": [
            {"active": True, "defaultValue": False, "label": v, "validFor": None, "value": v}
            for v in f.picklist
        ],
    }
