/* GENERATED FILE: do not edit by hand.
 *
 * Made by tools/gen_mdm_schema.py from Apple's MDM command schemas
 * (apple/device-management, the YAML files of mdm/commands): 66 files, 66 commands.
 * To regenerate, from the source directory:
 *   python3 tools/gen_mdm_schema.py --yaml ../shared/apple-device-management/mdm/commands --out core/mdm/cmdschema_data.c
 * ctest's schema/fresh test fails when this file does not match the YAML. */
#include "mdm/cmdschema.h"

#include <stdbool.h>
#include <stddef.h>

static const mdm_schema_key_t k_AccountConfiguration_AutoSetupAdminAccounts_AutoSetupAdminAccountItem[] = {
    {.name = "shortName", .type = MDM_T_STRING, .flags = MDM_SKF_REQUIRED},
    {.name = "fullName", .type = MDM_T_STRING},
    {.name = "passwordHash", .type = MDM_T_DATA},
    {.name = "hidden", .type = MDM_T_BOOLEAN},
};
static const mdm_schema_key_t k_AccountConfiguration_AutoSetupAdminAccounts[] = {
    {.name = "AutoSetupAdminAccountItem", .type = MDM_T_DICT, .sub = k_AccountConfiguration_AutoSetupAdminAccounts_AutoSetupAdminAccountItem, .nsub = 4},
};
static const mdm_schema_key_t k_AccountConfiguration[] = {
    {.name = "SkipPrimarySetupAccountCreation", .type = MDM_T_BOOLEAN},
    {.name = "SetPrimarySetupAccountAsRegularUser", .type = MDM_T_BOOLEAN},
    {.name = "PrimaryAccountFullName", .type = MDM_T_STRING},
    {.name = "PrimaryAccountUserName", .type = MDM_T_STRING},
    {.name = "DontAutoPopulatePrimaryAccountInfo", .type = MDM_T_BOOLEAN},
    {.name = "LockPrimaryAccountInfo", .type = MDM_T_BOOLEAN},
    {.name = "AutoSetupAdminAccounts", .type = MDM_T_ARRAY, .sub = k_AccountConfiguration_AutoSetupAdminAccounts, .nsub = 1},
    {.name = "ManagedLocalUserShortName", .type = MDM_T_STRING},
};
static const char *const v_ActivationLockBypassCode_response[] = {"ActivationLockBypassCode"};
static const mdm_schema_key_t k_ActiveNSExtensions_FilterExtensionPoints[] = {
    {.name = "FilterExtensionPointsItem", .type = MDM_T_STRING},
};
static const mdm_schema_key_t k_ActiveNSExtensions[] = {
    {.name = "FilterExtensionPoints", .type = MDM_T_ARRAY, .sub = k_ActiveNSExtensions_FilterExtensionPoints, .nsub = 1},
};
static const char *const v_ActiveNSExtensions_response[] = {"Extensions"};
static const mdm_schema_key_t k_ApplyRedemptionCode[] = {
    {.name = "Identifier", .type = MDM_T_STRING, .flags = MDM_SKF_REQUIRED},
    {.name = "RedemptionCode", .type = MDM_T_STRING, .flags = MDM_SKF_REQUIRED},
};
static const char *const v_AvailableOSUpdates_response[] = {"AvailableOSUpdates"};
static const mdm_schema_key_t k_CertificateList[] = {
    {.name = "ManagedOnly", .type = MDM_T_BOOLEAN},
};
static const char *const v_CertificateList_response[] = {"CertificateList"};
static const mdm_schema_key_t k_ClearPasscode[] = {
    {.name = "UnlockToken", .type = MDM_T_DATA, .flags = MDM_SKF_REQUIRED},
};
static const char *const v_ContentCachingInformation_response[] = {"StatusResponse"};
static const mdm_schema_key_t k_DeclarativeManagement[] = {
    {.name = "Data", .type = MDM_T_DATA},
};
static const mdm_schema_key_t k_DeleteUser[] = {
    {.name = "UserName", .type = MDM_T_STRING},
    {.name = "ForceDeletion", .type = MDM_T_BOOLEAN},
    {.name = "DeleteAllUsers", .type = MDM_T_BOOLEAN},
};
static const char *const v_DeviceInformation_Queries_QueriesItem[] = {
    "UDID", "ProvisioningUDID", "OrganizationInfo", "MDMOptions", "LastCloudBackupDate",
    "AwaitingConfiguration", "iTunesStoreAccountIsActive", "iTunesStoreAccountHash", "DeviceName",
    "OSVersion", "SupplementalOSVersionExtra", "BuildVersion", "SupplementalBuildVersion",
    "ModelName", "Model", "ModelNumber", "IsAppleSilicon", "ProductName", "SerialNumber",
    "DeviceCapacity", "AvailableDeviceCapacity", "IMEI", "MEID", "ModemFirmwareVersion",
    "CellularTechnology", "BatteryLevel", "HasBattery", "IsSupervised", "IsMultiUser",
    "IsDeviceLocatorServiceEnabled", "IsActivationLockEnabled", "IsActivationLockSupported",
    "IsDoNotDisturbInEffect", "DeviceID", "EASDeviceIdentifier", "IsCloudBackupEnabled",
    "ActiveManagedUsers", "OSUpdateSettings", "LocalHostName", "HostName", "AutoSetupAdminAccounts",
    "SystemIntegrityProtectionEnabled", "SupportsLOMDevice", "IsMDMLostModeEnabled",
    "MaximumResidentUsers", "EstimatedResidentUsers", "QuotaSize", "ResidentUsers",
    "UserSessionTimeout", "TemporarySessionTimeout", "TemporarySessionOnly",
    "ManagedAppleIDDefaultDomains", "OnlineAuthenticationGracePeriod",
    "SkipLanguageAndLocaleSetupForNewUsers", "PushToken", "DiagnosticSubmissionEnabled",
    "AppAnalyticsEnabled", "TimeZone", "ICCID", "BluetoothMAC", "WiFiMAC", "EthernetMAC",
    "CurrentCarrierNetwork", "SIMCarrierNetwork", "SubscriberCarrierNetwork",
    "CarrierSettingsVersion", "PhoneNumber", "DataRoamingEnabled", "VoiceRoamingEnabled",
    "PersonalHotspotEnabled", "IsNetworkTethered", "IsRoaming", "SubscriberMCC", "SubscriberMNC",
    "CurrentMCC", "CurrentMNC", "ServiceSubscriptions", "PINRequiredForEraseDevice",
    "PINRequiredForDeviceLock", "SupportsiOSAppInstalls", "SoftwareUpdateDeviceID",
    "SoftwareUpdateSettings", "AccessibilitySettings", "DevicePropertiesAttestation",
    "EACSPreflight",
};
static const mdm_schema_key_t k_DeviceInformation_Queries[] = {
    {.name = "QueriesItem", .type = MDM_T_STRING, .flags = MDM_SKF_VALUES_ADVISORY, .values = v_DeviceInformation_Queries_QueriesItem, .nvalues = 85},
};
static const mdm_schema_key_t k_DeviceInformation[] = {
    {.name = "Queries", .type = MDM_T_ARRAY, .flags = MDM_SKF_REQUIRED, .sub = k_DeviceInformation_Queries, .nsub = 1},
    {.name = "DeviceAttestationNonce", .type = MDM_T_DATA},
};
static const char *const v_DeviceInformation_response[] = {"QueryResponses"};
static const char *const v_DeviceLocation_response[] = {
    "Latitude", "Longitude", "HorizontalAccuracy", "VerticalAccuracy", "Altitude", "Speed",
    "Course", "Timestamp",
};
static const mdm_schema_key_t k_DeviceLock[] = {
    {.name = "Message", .type = MDM_T_STRING},
    {.name = "PhoneNumber", .type = MDM_T_STRING},
    {.name = "PIN", .type = MDM_T_STRING},
};
static const char *const v_DeviceLock_response[] = {"MessageResult"};
static const mdm_schema_key_t k_EnableLostMode[] = {
    {.name = "Message", .type = MDM_T_STRING},
    {.name = "PhoneNumber", .type = MDM_T_STRING},
    {.name = "Footnote", .type = MDM_T_STRING},
};
static const char *const v_EraseDevice_ObliterationBehavior[] = {
    "Default", "DoNotObliterate", "ObliterateWithWarning", "Always",
};
static const mdm_schema_key_t k_EraseDevice_ReturnToService[] = {
    {.name = "Enabled", .type = MDM_T_BOOLEAN, .flags = MDM_SKF_REQUIRED},
    {.name = "WiFiProfileData", .type = MDM_T_DATA},
    {.name = "MDMProfileData", .type = MDM_T_DATA},
};
static const mdm_schema_key_t k_EraseDevice[] = {
    {.name = "PreserveDataPlan", .type = MDM_T_BOOLEAN},
    {.name = "DisallowProximitySetup", .type = MDM_T_BOOLEAN},
    {.name = "PIN", .type = MDM_T_STRING},
    {.name = "ObliterationBehavior", .type = MDM_T_STRING, .values = v_EraseDevice_ObliterationBehavior, .nvalues = 4},
    {.name = "ReturnToService", .type = MDM_T_DICT, .sub = k_EraseDevice_ReturnToService, .nsub = 3},
};
static const char *const v_InstallApplication_Options_PurchaseMethod[] = {"0", "1"};
static const mdm_schema_key_t k_InstallApplication_Options[] = {
    {.name = "PurchaseMethod", .type = MDM_T_INTEGER, .values = v_InstallApplication_Options_PurchaseMethod, .nvalues = 2},
};
static const char *const v_InstallApplication_ManagementFlags[] = {"1", "4", "5"};
static const mdm_schema_key_t k_InstallApplication_Configuration[] = {
    {.name = "ANY", .type = MDM_T_ANY, .flags = MDM_SKF_WILDCARD},
};
static const mdm_schema_key_t k_InstallApplication_Attributes_AssociatedDomains[] = {
    {.name = "AssociatedDomain", .type = MDM_T_STRING},
};
static const mdm_schema_key_t k_InstallApplication_Attributes[] = {
    {.name = "VPNUUID", .type = MDM_T_STRING},
    {.name = "ContentFilterUUID", .type = MDM_T_STRING},
    {.name = "DNSProxyUUID", .type = MDM_T_STRING},
    {.name = "RelayUUID", .type = MDM_T_STRING},
    {.name = "AssociatedDomains", .type = MDM_T_ARRAY, .sub = k_InstallApplication_Attributes_AssociatedDomains, .nsub = 1},
    {.name = "AssociatedDomainsEnableDirectDownloads", .type = MDM_T_BOOLEAN},
    {.name = "Removable", .type = MDM_T_BOOLEAN},
    {.name = "TapToPayScreenLock", .type = MDM_T_BOOLEAN},
    {.name = "CellularSliceUUID", .type = MDM_T_STRING},
    {.name = "Hideable", .type = MDM_T_BOOLEAN},
    {.name = "Lockable", .type = MDM_T_BOOLEAN},
};
static const char *const v_InstallApplication_ChangeManagementState[] = {"Managed"};
static const mdm_schema_key_t k_InstallApplication[] = {
    {.name = "iTunesStoreID", .type = MDM_T_INTEGER},
    {.name = "Identifier", .type = MDM_T_STRING},
    {.name = "Options", .type = MDM_T_DICT, .sub = k_InstallApplication_Options, .nsub = 1},
    {.name = "ManifestURL", .type = MDM_T_STRING},
    {.name = "ManagementFlags", .type = MDM_T_INTEGER, .values = v_InstallApplication_ManagementFlags, .nvalues = 3},
    {.name = "Configuration", .type = MDM_T_DICT, .sub = k_InstallApplication_Configuration, .nsub = 1},
    {.name = "Attributes", .type = MDM_T_DICT, .sub = k_InstallApplication_Attributes, .nsub = 11},
    {.name = "ChangeManagementState", .type = MDM_T_STRING, .values = v_InstallApplication_ChangeManagementState, .nvalues = 1},
    {.name = "InstallAsManaged", .type = MDM_T_BOOLEAN},
    {.name = "iOSApp", .type = MDM_T_BOOLEAN},
};
static const char *const v_InstallApplication_response[] = {
    "Identifier", "State", "RejectionReason",
};
static const mdm_schema_key_t k_InstallEnterpriseApplication_Manifest[] = {
    {.name = "ANY", .type = MDM_T_ANY, .flags = MDM_SKF_WILDCARD},
};
static const mdm_schema_key_t k_InstallEnterpriseApplication_ManifestURLPinningCerts[] = {
    {.name = "ManifestURLPinningCertsItem", .type = MDM_T_DATA, .flags = MDM_SKF_REQUIRED},
};
static const char *const v_InstallEnterpriseApplication_ManagementFlags[] = {"1"};
static const mdm_schema_key_t k_InstallEnterpriseApplication_Configuration[] = {
    {.name = "ANY", .type = MDM_T_ANY, .flags = MDM_SKF_WILDCARD},
};
static const char *const v_InstallEnterpriseApplication_ChangeManagementState[] = {"Managed"};
static const mdm_schema_key_t k_InstallEnterpriseApplication[] = {
    {.name = "Manifest", .type = MDM_T_DICT, .sub = k_InstallEnterpriseApplication_Manifest, .nsub = 1},
    {.name = "ManifestURL", .type = MDM_T_STRING},
    {.name = "ManifestURLPinningCerts", .type = MDM_T_ARRAY, .sub = k_InstallEnterpriseApplication_ManifestURLPinningCerts, .nsub = 1},
    {.name = "PinningRevocationCheckRequired", .type = MDM_T_BOOLEAN},
    {.name = "InstallAsManaged", .type = MDM_T_BOOLEAN},
    {.name = "ManagementFlags", .type = MDM_T_INTEGER, .values = v_InstallEnterpriseApplication_ManagementFlags, .nvalues = 1},
    {.name = "Configuration", .type = MDM_T_DICT, .sub = k_InstallEnterpriseApplication_Configuration, .nsub = 1},
    {.name = "ChangeManagementState", .type = MDM_T_STRING, .values = v_InstallEnterpriseApplication_ChangeManagementState, .nvalues = 1},
    {.name = "iOSApp", .type = MDM_T_BOOLEAN},
};
static const char *const v_InstallMedia_MediaType[] = {"Book"};
static const char *const v_InstallMedia_Kind[] = {"pdf", "epub", "ibooks"};
static const mdm_schema_key_t k_InstallMedia[] = {
    {.name = "iTunesStoreID", .type = MDM_T_INTEGER},
    {.name = "MediaURL", .type = MDM_T_STRING},
    {.name = "MediaType", .type = MDM_T_STRING, .flags = MDM_SKF_REQUIRED, .values = v_InstallMedia_MediaType, .nvalues = 1},
    {.name = "PersistentID", .type = MDM_T_STRING},
    {.name = "Kind", .type = MDM_T_STRING, .values = v_InstallMedia_Kind, .nvalues = 3},
    {.name = "Version", .type = MDM_T_STRING},
    {.name = "Author", .type = MDM_T_STRING},
    {.name = "Title", .type = MDM_T_STRING},
};
static const char *const v_InstallMedia_response[] = {
    "iTunesStoreID", "MediaURL", "PersistentID", "MediaType", "State", "RejectionReason",
};
static const mdm_schema_key_t k_InstallProfile[] = {
    {.name = "Payload", .type = MDM_T_DATA, .flags = MDM_SKF_REQUIRED},
};
static const mdm_schema_key_t k_InstallProvisioningProfile[] = {
    {.name = "ProvisioningProfile", .type = MDM_T_DATA, .flags = MDM_SKF_REQUIRED},
};
static const mdm_schema_key_t k_InstalledApplicationList_Identifiers[] = {
    {.name = "IdentifiersItem", .type = MDM_T_STRING},
};
static const char *const v_InstalledApplicationList_Items_ItemsItem[] = {
    "AdHocCodeSigned", "AppStoreVendable", "BetaApp", "BundleSize", "DeviceBasedVPP",
    "DistributorIdentifier", "DynamicSize", "ExternalVersionIdentifier", "HasUpdateAvailable",
    "Identifier", "Installing", "IsAppClip", "IsValidated", "Name", "ShortVersion", "Version",
};
static const mdm_schema_key_t k_InstalledApplicationList_Items[] = {
    {.name = "ItemsItem", .type = MDM_T_STRING, .values = v_InstalledApplicationList_Items_ItemsItem, .nvalues = 16},
};
static const mdm_schema_key_t k_InstalledApplicationList[] = {
    {.name = "Identifiers", .type = MDM_T_ARRAY, .sub = k_InstalledApplicationList_Identifiers, .nsub = 1},
    {.name = "ManagedAppsOnly", .type = MDM_T_BOOLEAN},
    {.name = "Items", .type = MDM_T_ARRAY, .sub = k_InstalledApplicationList_Items, .nsub = 1},
};
static const char *const v_InstalledApplicationList_response[] = {"InstalledApplicationList"};
static const char *const v_InviteToProgram_ProgramID[] = {"com.apple.cloudvpp"};
static const mdm_schema_key_t k_InviteToProgram[] = {
    {.name = "ProgramID", .type = MDM_T_STRING, .flags = MDM_SKF_REQUIRED, .values = v_InviteToProgram_ProgramID, .nvalues = 1},
    {.name = "InvitationURL", .type = MDM_T_STRING, .flags = MDM_SKF_REQUIRED},
};
static const char *const v_InviteToProgram_response[] = {"InvitationResult"};
static const char *const v_LOMDeviceRequest_RequestList_RequestListItem_DeviceRequestType[] = {
    "PowerON", "PowerOFF", "Reset",
};
static const mdm_schema_key_t k_LOMDeviceRequest_RequestList_RequestListItem_PrimaryIPv6AddressList[] = {
    {.name = "PrimaryIPv6AddressListItem", .type = MDM_T_STRING, .flags = MDM_SKF_REQUIRED},
};
static const mdm_schema_key_t k_LOMDeviceRequest_RequestList_RequestListItem_SecondaryIPv6AddressList[] = {
    {.name = "SecondaryIPv6AddressListItem", .type = MDM_T_STRING, .flags = MDM_SKF_REQUIRED},
};
static const mdm_schema_key_t k_LOMDeviceRequest_RequestList_RequestListItem[] = {
    {.name = "DeviceRequestType", .type = MDM_T_STRING, .flags = MDM_SKF_REQUIRED, .values = v_LOMDeviceRequest_RequestList_RequestListItem_DeviceRequestType, .nvalues = 3},
    {.name = "DeviceRequestUUID", .type = MDM_T_STRING, .flags = MDM_SKF_REQUIRED},
    {.name = "DeviceDNSName", .type = MDM_T_STRING, .flags = MDM_SKF_REQUIRED},
    {.name = "PrimaryIPv6AddressList", .type = MDM_T_ARRAY, .flags = MDM_SKF_REQUIRED, .sub = k_LOMDeviceRequest_RequestList_RequestListItem_PrimaryIPv6AddressList, .nsub = 1},
    {.name = "SecondaryIPv6AddressList", .type = MDM_T_ARRAY, .flags = MDM_SKF_REQUIRED, .sub = k_LOMDeviceRequest_RequestList_RequestListItem_SecondaryIPv6AddressList, .nsub = 1},
    {.name = "LOMProtocolVersion", .type = MDM_T_INTEGER, .flags = MDM_SKF_REQUIRED},
};
static const mdm_schema_key_t k_LOMDeviceRequest_RequestList[] = {
    {.name = "RequestListItem", .type = MDM_T_DICT, .flags = MDM_SKF_REQUIRED, .sub = k_LOMDeviceRequest_RequestList_RequestListItem, .nsub = 6},
};
static const mdm_schema_key_t k_LOMDeviceRequest[] = {
    {.name = "RequestList", .type = MDM_T_ARRAY, .flags = MDM_SKF_REQUIRED, .sub = k_LOMDeviceRequest_RequestList, .nsub = 1},
};
static const char *const v_LOMDeviceRequest_response[] = {"ResponseList"};
static const char *const v_LOMSetupRequest_response[] = {
    "PrimaryIPv6AddressList", "SecondaryIPv6AddressList", "LOMProtocolVersion",
};
static const mdm_schema_key_t k_ManagedApplicationAttributes_Identifiers[] = {
    {.name = "IdentifiersItem", .type = MDM_T_STRING},
};
static const mdm_schema_key_t k_ManagedApplicationAttributes[] = {
    {.name = "Identifiers", .type = MDM_T_ARRAY, .flags = MDM_SKF_REQUIRED, .sub = k_ManagedApplicationAttributes_Identifiers, .nsub = 1},
};
static const char *const v_ManagedApplicationAttributes_response[] = {"ApplicationAttributes"};
static const mdm_schema_key_t k_ManagedApplicationConfiguration_Identifiers[] = {
    {.name = "IdentifiersItem", .type = MDM_T_STRING},
};
static const mdm_schema_key_t k_ManagedApplicationConfiguration[] = {
    {.name = "Identifiers", .type = MDM_T_ARRAY, .flags = MDM_SKF_REQUIRED, .sub = k_ManagedApplicationConfiguration_Identifiers, .nsub = 1},
};
static const char *const v_ManagedApplicationConfiguration_response[] = {
    "ApplicationConfigurations",
};
static const mdm_schema_key_t k_ManagedApplicationFeedback_Identifiers[] = {
    {.name = "IdentifiersItem", .type = MDM_T_STRING},
};
static const mdm_schema_key_t k_ManagedApplicationFeedback[] = {
    {.name = "Identifiers", .type = MDM_T_ARRAY, .flags = MDM_SKF_REQUIRED, .sub = k_ManagedApplicationFeedback_Identifiers, .nsub = 1},
    {.name = "DeleteFeedback", .type = MDM_T_BOOLEAN},
};
static const char *const v_ManagedApplicationFeedback_response[] = {"ManagedApplicationFeedback"};
static const mdm_schema_key_t k_ManagedApplicationList_Identifiers[] = {
    {.name = "IdentifiersItem", .type = MDM_T_STRING},
};
static const mdm_schema_key_t k_ManagedApplicationList[] = {
    {.name = "Identifiers", .type = MDM_T_ARRAY, .sub = k_ManagedApplicationList_Identifiers, .nsub = 1},
};
static const char *const v_ManagedApplicationList_response[] = {"ManagedApplicationList"};
static const char *const v_ManagedMediaList_response[] = {"Books"};
static const char *const v_NSExtensionMappings_response[] = {"Extensions"};
static const char *const v_OSUpdateStatus_response[] = {"OSUpdateStatus"};
static const mdm_schema_key_t k_ProfileList[] = {
    {.name = "ManagedOnly", .type = MDM_T_BOOLEAN},
};
static const char *const v_ProfileList_response[] = {"ProfileList"};
static const mdm_schema_key_t k_ProvisioningProfileList[] = {
    {.name = "ManagedOnly", .type = MDM_T_BOOLEAN},
};
static const char *const v_ProvisioningProfileList_response[] = {"ProvisioningProfileList"};
static const mdm_schema_key_t k_RefreshCellularPlans[] = {
    {.name = "eSIMServerURL", .type = MDM_T_STRING, .flags = MDM_SKF_REQUIRED},
};
static const mdm_schema_key_t k_RemoveApplication[] = {
    {.name = "Identifier", .type = MDM_T_STRING, .flags = MDM_SKF_REQUIRED},
};
static const char *const v_RemoveMedia_MediaType[] = {"Book"};
static const mdm_schema_key_t k_RemoveMedia[] = {
    {.name = "MediaType", .type = MDM_T_STRING, .flags = MDM_SKF_REQUIRED, .values = v_RemoveMedia_MediaType, .nvalues = 1},
    {.name = "iTunesStoreID", .type = MDM_T_STRING},
    {.name = "PersistentID", .type = MDM_T_STRING},
};
static const mdm_schema_key_t k_RemoveProfile[] = {
    {.name = "Identifier", .type = MDM_T_STRING, .flags = MDM_SKF_REQUIRED},
};
static const mdm_schema_key_t k_RemoveProvisioningProfile[] = {
    {.name = "UUID", .type = MDM_T_STRING, .flags = MDM_SKF_REQUIRED},
};
static const mdm_schema_key_t k_RequestMirroring[] = {
    {.name = "DestinationName", .type = MDM_T_STRING},
    {.name = "DestinationDeviceID", .type = MDM_T_STRING},
    {.name = "ScanTime", .type = MDM_T_INTEGER},
    {.name = "Password", .type = MDM_T_STRING},
};
static const char *const v_RequestMirroring_response[] = {"MirroringResult"};
static const char *const v_RequestUnlockToken_response[] = {"UnlockToken"};
static const mdm_schema_key_t k_RestartDevice_KextPaths[] = {
    {.name = "KextPathsItem", .type = MDM_T_STRING},
};
static const mdm_schema_key_t k_RestartDevice[] = {
    {.name = "RebuildKernelCache", .type = MDM_T_BOOLEAN},
    {.name = "KextPaths", .type = MDM_T_ARRAY, .sub = k_RestartDevice_KextPaths, .nsub = 1},
    {.name = "NotifyUser", .type = MDM_T_BOOLEAN},
};
static const mdm_schema_key_t k_Restrictions[] = {
    {.name = "ProfileRestrictions", .type = MDM_T_BOOLEAN},
};
static const char *const v_Restrictions_response[] = {"GlobalRestrictions", "ProfileRestrictions"};
static const char *const v_RotateFileVaultKey_KeyType[] = {"personal", "institutional"};
static const mdm_schema_key_t k_RotateFileVaultKey_FileVaultUnlock[] = {
    {.name = "Password", .type = MDM_T_STRING},
    {.name = "PrivateKeyExport", .type = MDM_T_DATA},
    {.name = "PrivateKeyExportPassword", .type = MDM_T_STRING},
};
static const mdm_schema_key_t k_RotateFileVaultKey[] = {
    {.name = "KeyType", .type = MDM_T_STRING, .flags = MDM_SKF_REQUIRED, .values = v_RotateFileVaultKey_KeyType, .nvalues = 2},
    {.name = "FileVaultUnlock", .type = MDM_T_DICT, .flags = MDM_SKF_REQUIRED, .sub = k_RotateFileVaultKey_FileVaultUnlock, .nsub = 3},
    {.name = "NewCertificate", .type = MDM_T_DATA},
    {.name = "ReplyEncryptionCertificate", .type = MDM_T_DATA},
};
static const char *const v_RotateFileVaultKey_response[] = {"RotateResult"};
static const char *const v_ScheduleOSUpdate_Updates_UpdatesItem_InstallAction[] = {
    "Default", "DownloadOnly", "InstallASAP", "NotifyOnly", "InstallLater", "InstallForceRestart",
};
static const char *const v_ScheduleOSUpdate_Updates_UpdatesItem_Priority[] = {"Low", "High"};
static const mdm_schema_key_t k_ScheduleOSUpdate_Updates_UpdatesItem[] = {
    {.name = "ProductKey", .type = MDM_T_STRING},
    {.name = "ProductVersion", .type = MDM_T_STRING},
    {.name = "InstallAction", .type = MDM_T_STRING, .flags = MDM_SKF_REQUIRED, .values = v_ScheduleOSUpdate_Updates_UpdatesItem_InstallAction, .nvalues = 6},
    {.name = "MaxUserDeferrals", .type = MDM_T_INTEGER},
    {.name = "Priority", .type = MDM_T_STRING, .values = v_ScheduleOSUpdate_Updates_UpdatesItem_Priority, .nvalues = 2},
};
static const mdm_schema_key_t k_ScheduleOSUpdate_Updates[] = {
    {.name = "UpdatesItem", .type = MDM_T_DICT, .flags = MDM_SKF_REQUIRED, .sub = k_ScheduleOSUpdate_Updates_UpdatesItem, .nsub = 5},
};
static const mdm_schema_key_t k_ScheduleOSUpdate[] = {
    {.name = "Updates", .type = MDM_T_ARRAY, .flags = MDM_SKF_REQUIRED, .sub = k_ScheduleOSUpdate_Updates, .nsub = 1},
};
static const char *const v_ScheduleOSUpdate_response[] = {"UpdateResults"};
static const mdm_schema_key_t k_ScheduleOSUpdateScan[] = {
    {.name = "Force", .type = MDM_T_BOOLEAN},
};
static const char *const v_ScheduleOSUpdateScan_response[] = {"ScanInitiated"};
static const char *const v_SecurityInfo_response[] = {"SecurityInfo"};
static const mdm_schema_key_t k_SetAutoAdminPassword[] = {
    {.name = "GUID", .type = MDM_T_STRING, .flags = MDM_SKF_REQUIRED},
    {.name = "passwordHash", .type = MDM_T_DATA, .flags = MDM_SKF_REQUIRED},
};
static const mdm_schema_key_t k_SetFirmwarePassword[] = {
    {.name = "CurrentPassword", .type = MDM_T_STRING},
    {.name = "NewPassword", .type = MDM_T_STRING, .flags = MDM_SKF_REQUIRED},
    {.name = "AllowOroms", .type = MDM_T_BOOLEAN},
};
static const char *const v_SetFirmwarePassword_response[] = {"SetFirmwarePassword"};
static const mdm_schema_key_t k_SetRecoveryLock[] = {
    {.name = "CurrentPassword", .type = MDM_T_STRING},
    {.name = "NewPassword", .type = MDM_T_STRING, .flags = MDM_SKF_REQUIRED},
};
static const char *const v_Settings_Settings_Wallpaper_Item[] = {"Wallpaper"};
static const char *const v_Settings_Settings_Wallpaper_Where[] = {"1", "2", "3"};
static const mdm_schema_key_t k_Settings_Settings_Wallpaper[] = {
    {.name = "Item", .type = MDM_T_STRING, .flags = MDM_SKF_REQUIRED, .values = v_Settings_Settings_Wallpaper_Item, .nvalues = 1},
    {.name = "Image", .type = MDM_T_DATA, .flags = MDM_SKF_REQUIRED},
    {.name = "Where", .type = MDM_T_INTEGER, .flags = MDM_SKF_REQUIRED, .values = v_Settings_Settings_Wallpaper_Where, .nvalues = 3},
};
static const char *const v_Settings_Settings_DataRoaming_Item[] = {"DataRoaming"};
static const mdm_schema_key_t k_Settings_Settings_DataRoaming[] = {
    {.name = "Item", .type = MDM_T_STRING, .flags = MDM_SKF_REQUIRED, .values = v_Settings_Settings_DataRoaming_Item, .nvalues = 1},
    {.name = "Enabled", .type = MDM_T_BOOLEAN, .flags = MDM_SKF_REQUIRED},
};
static const char *const v_Settings_Settings_VoiceRoaming_Item[] = {"VoiceRoaming"};
static const mdm_schema_key_t k_Settings_Settings_VoiceRoaming[] = {
    {.name = "Item", .type = MDM_T_STRING, .flags = MDM_SKF_REQUIRED, .values = v_Settings_Settings_VoiceRoaming_Item, .nvalues = 1},
    {.name = "Enabled", .type = MDM_T_BOOLEAN, .flags = MDM_SKF_REQUIRED},
};
static const char *const v_Settings_Settings_PersonalHotspot_Item[] = {"PersonalHotspot"};
static const mdm_schema_key_t k_Settings_Settings_PersonalHotspot[] = {
    {.name = "Item", .type = MDM_T_STRING, .flags = MDM_SKF_REQUIRED, .values = v_Settings_Settings_PersonalHotspot_Item, .nvalues = 1},
    {.name = "Enabled", .type = MDM_T_BOOLEAN, .flags = MDM_SKF_REQUIRED},
};
static const char *const v_Settings_Settings_Bluetooth_Item[] = {"Bluetooth"};
static const mdm_schema_key_t k_Settings_Settings_Bluetooth[] = {
    {.name = "Item", .type = MDM_T_STRING, .flags = MDM_SKF_REQUIRED, .values = v_Settings_Settings_Bluetooth_Item, .nvalues = 1},
    {.name = "Enabled", .type = MDM_T_BOOLEAN, .flags = MDM_SKF_REQUIRED},
};
static const char *const v_Settings_Settings_ApplicationConfiguration_Item[] = {
    "ApplicationConfiguration",
};
static const mdm_schema_key_t k_Settings_Settings_ApplicationConfiguration_Configuration[] = {
    {.name = "ANY", .type = MDM_T_ANY, .flags = MDM_SKF_WILDCARD},
};
static const mdm_schema_key_t k_Settings_Settings_ApplicationConfiguration[] = {
    {.name = "Item", .type = MDM_T_STRING, .flags = MDM_SKF_REQUIRED, .values = v_Settings_Settings_ApplicationConfiguration_Item, .nvalues = 1},
    {.name = "Identifier", .type = MDM_T_STRING, .flags = MDM_SKF_REQUIRED},
    {.name = "Configuration", .type = MDM_T_DICT, .sub = k_Settings_Settings_ApplicationConfiguration_Configuration, .nsub = 1},
};
static const char *const v_Settings_Settings_ApplicationAttributes_Item[] = {
    "ApplicationAttributes",
};
static const mdm_schema_key_t k_Settings_Settings_ApplicationAttributes_Attributes_AssociatedDomains[] = {
    {.name = "AssociatedDomain", .type = MDM_T_STRING},
};
static const mdm_schema_key_t k_Settings_Settings_ApplicationAttributes_Attributes[] = {
    {.name = "VPNUUID", .type = MDM_T_STRING},
    {.name = "ContentFilterUUID", .type = MDM_T_STRING},
    {.name = "DNSProxyUUID", .type = MDM_T_STRING},
    {.name = "RelayUUID", .type = MDM_T_STRING},
    {.name = "AssociatedDomains", .type = MDM_T_ARRAY, .sub = k_Settings_Settings_ApplicationAttributes_Attributes_AssociatedDomains, .nsub = 1},
    {.name = "AssociatedDomainsEnableDirectDownloads", .type = MDM_T_BOOLEAN},
    {.name = "Removable", .type = MDM_T_BOOLEAN},
    {.name = "TapToPayScreenLock", .type = MDM_T_BOOLEAN},
    {.name = "CellularSliceUUID", .type = MDM_T_STRING},
    {.name = "Hideable", .type = MDM_T_BOOLEAN},
    {.name = "Lockable", .type = MDM_T_BOOLEAN},
};
static const mdm_schema_key_t k_Settings_Settings_ApplicationAttributes[] = {
    {.name = "Item", .type = MDM_T_STRING, .flags = MDM_SKF_REQUIRED, .values = v_Settings_Settings_ApplicationAttributes_Item, .nvalues = 1},
    {.name = "Identifier", .type = MDM_T_STRING, .flags = MDM_SKF_REQUIRED},
    {.name = "Attributes", .type = MDM_T_DICT, .sub = k_Settings_Settings_ApplicationAttributes_Attributes, .nsub = 11},
};
static const char *const v_Settings_Settings_DeviceName_Item[] = {"DeviceName"};
static const mdm_schema_key_t k_Settings_Settings_DeviceName[] = {
    {.name = "Item", .type = MDM_T_STRING, .flags = MDM_SKF_REQUIRED, .values = v_Settings_Settings_DeviceName_Item, .nvalues = 1},
    {.name = "DeviceName", .type = MDM_T_STRING, .flags = MDM_SKF_REQUIRED},
};
static const char *const v_Settings_Settings_HostName_Item[] = {"HostName"};
static const mdm_schema_key_t k_Settings_Settings_HostName[] = {
    {.name = "Item", .type = MDM_T_STRING, .flags = MDM_SKF_REQUIRED, .values = v_Settings_Settings_HostName_Item, .nvalues = 1},
    {.name = "HostName", .type = MDM_T_STRING, .flags = MDM_SKF_REQUIRED},
};
static const char *const v_Settings_Settings_OrganizationInfo_Item[] = {"OrganizationInfo"};
static const mdm_schema_key_t k_Settings_Settings_OrganizationInfo_OrganizationInfo[] = {
    {.name = "OrganizationName", .type = MDM_T_STRING, .flags = MDM_SKF_REQUIRED},
    {.name = "OrganizationShortName", .type = MDM_T_STRING},
    {.name = "OrganizationAddress", .type = MDM_T_STRING},
    {.name = "OrganizationPhone", .type = MDM_T_STRING},
    {.name = "OrganizationEmail", .type = MDM_T_STRING},
    {.name = "OrganizationMagic", .type = MDM_T_STRING},
};
static const mdm_schema_key_t k_Settings_Settings_OrganizationInfo[] = {
    {.name = "Item", .type = MDM_T_STRING, .flags = MDM_SKF_REQUIRED, .values = v_Settings_Settings_OrganizationInfo_Item, .nvalues = 1},
    {.name = "OrganizationInfo", .type = MDM_T_DICT, .sub = k_Settings_Settings_OrganizationInfo_OrganizationInfo, .nsub = 6},
};
static const char *const v_Settings_Settings_MDMOptions_Item[] = {"MDMOptions"};
static const mdm_schema_key_t k_Settings_Settings_MDMOptions_MDMOptions[] = {
    {.name = "ActivationLockAllowedWhileSupervised", .type = MDM_T_BOOLEAN},
    {.name = "BootstrapTokenAllowed", .type = MDM_T_BOOLEAN},
    {.name = "PromptUserToAllowBootstrapTokenForAuthentication", .type = MDM_T_BOOLEAN},
};
static const mdm_schema_key_t k_Settings_Settings_MDMOptions[] = {
    {.name = "Item", .type = MDM_T_STRING, .flags = MDM_SKF_REQUIRED, .values = v_Settings_Settings_MDMOptions_Item, .nvalues = 1},
    {.name = "MDMOptions", .type = MDM_T_DICT, .flags = MDM_SKF_REQUIRED, .sub = k_Settings_Settings_MDMOptions_MDMOptions, .nsub = 3},
};
static const char *const v_Settings_Settings_MaximumResidentUsers_Item[] = {"MaximumResidentUsers"};
static const mdm_schema_key_t k_Settings_Settings_MaximumResidentUsers[] = {
    {.name = "Item", .type = MDM_T_STRING, .flags = MDM_SKF_REQUIRED, .values = v_Settings_Settings_MaximumResidentUsers_Item, .nvalues = 1},
    {.name = "MaximumResidentUsers", .type = MDM_T_INTEGER, .flags = MDM_SKF_REQUIRED},
};
static const char *const v_Settings_Settings_SharedDeviceConfiguration_Item[] = {
    "SharedDeviceConfiguration",
};
static const mdm_schema_key_t k_Settings_Settings_SharedDeviceConfiguration_ManagedAppleIDDefaultDomains[] = {
    {.name = "AppleID domain", .type = MDM_T_STRING},
};
static const mdm_schema_key_t k_Settings_Settings_SharedDeviceConfiguration_AwaitUserConfiguration[] = {
    {.name = "Enabled", .type = MDM_T_BOOLEAN, .flags = MDM_SKF_REQUIRED},
};
static const char *const v_Settings_Settings_SharedDeviceConfiguration_PasscodePolicy_PasscodeLockGracePeriod[] = {
    "0", "60", "300", "900", "3600", "14400",
};
static const mdm_schema_key_t k_Settings_Settings_SharedDeviceConfiguration_PasscodePolicy[] = {
    {.name = "PasscodeLockGracePeriod", .type = MDM_T_INTEGER, .values = v_Settings_Settings_SharedDeviceConfiguration_PasscodePolicy_PasscodeLockGracePeriod, .nvalues = 6},
    {.name = "AutoLockTime", .type = MDM_T_INTEGER},
};
static const mdm_schema_key_t k_Settings_Settings_SharedDeviceConfiguration[] = {
    {.name = "Item", .type = MDM_T_STRING, .flags = MDM_SKF_REQUIRED, .values = v_Settings_Settings_SharedDeviceConfiguration_Item, .nvalues = 1},
    {.name = "QuotaSize", .type = MDM_T_INTEGER},
    {.name = "ResidentUsers", .type = MDM_T_INTEGER},
    {.name = "UserSessionTimeout", .type = MDM_T_INTEGER},
    {.name = "TemporarySessionTimeout", .type = MDM_T_INTEGER},
    {.name = "TemporarySessionOnly", .type = MDM_T_BOOLEAN},
    {.name = "ManagedAppleIDDefaultDomains", .type = MDM_T_ARRAY, .sub = k_Settings_Settings_SharedDeviceConfiguration_ManagedAppleIDDefaultDomains, .nsub = 1},
    {.name = "OnlineAuthenticationGracePeriod", .type = MDM_T_INTEGER},
    {.name = "SkipLanguageAndLocaleSetupForNewUsers", .type = MDM_T_BOOLEAN},
    {.name = "AwaitUserConfiguration", .type = MDM_T_DICT, .sub = k_Settings_Settings_SharedDeviceConfiguration_AwaitUserConfiguration, .nsub = 1},
    {.name = "PasscodePolicy", .type = MDM_T_DICT, .sub = k_Settings_Settings_SharedDeviceConfiguration_PasscodePolicy, .nsub = 2},
};
static const char *const v_Settings_Settings_DiagnosticSubmission_Item[] = {"DiagnosticSubmission"};
static const mdm_schema_key_t k_Settings_Settings_DiagnosticSubmission[] = {
    {.name = "Item", .type = MDM_T_STRING, .flags = MDM_SKF_REQUIRED, .values = v_Settings_Settings_DiagnosticSubmission_Item, .nvalues = 1},
    {.name = "Enabled", .type = MDM_T_BOOLEAN, .flags = MDM_SKF_REQUIRED},
};
static const char *const v_Settings_Settings_AppAnalytics_Item[] = {"AppAnalytics"};
static const mdm_schema_key_t k_Settings_Settings_AppAnalytics[] = {
    {.name = "Item", .type = MDM_T_STRING, .flags = MDM_SKF_REQUIRED, .values = v_Settings_Settings_AppAnalytics_Item, .nvalues = 1},
    {.name = "Enabled", .type = MDM_T_BOOLEAN, .flags = MDM_SKF_REQUIRED},
};
static const char *const v_Settings_Settings_PasscodeLockGracePeriod_Item[] = {
    "PasscodeLockGracePeriod",
};
static const char *const v_Settings_Settings_PasscodeLockGracePeriod_PasscodeLockGracePeriod[] = {
    "0", "60", "300", "900", "3600", "14400",
};
static const mdm_schema_key_t k_Settings_Settings_PasscodeLockGracePeriod[] = {
    {.name = "Item", .type = MDM_T_STRING, .flags = MDM_SKF_REQUIRED, .values = v_Settings_Settings_PasscodeLockGracePeriod_Item, .nvalues = 1},
    {.name = "PasscodeLockGracePeriod", .type = MDM_T_INTEGER, .flags = MDM_SKF_REQUIRED, .values = v_Settings_Settings_PasscodeLockGracePeriod_PasscodeLockGracePeriod, .nvalues = 6},
};
static const char *const v_Settings_Settings_TimeZone_Item[] = {"TimeZone"};
static const mdm_schema_key_t k_Settings_Settings_TimeZone[] = {
    {.name = "Item", .type = MDM_T_STRING, .flags = MDM_SKF_REQUIRED, .values = v_Settings_Settings_TimeZone_Item, .nvalues = 1},
    {.name = "TimeZone", .type = MDM_T_STRING, .flags = MDM_SKF_REQUIRED},
};
static const char *const v_Settings_Settings_SoftwareUpdateSettings_Item[] = {
    "SoftwareUpdateSettings",
};
static const char *const v_Settings_Settings_SoftwareUpdateSettings_RecommendationCadence[] = {
    "0", "1", "2",
};
static const mdm_schema_key_t k_Settings_Settings_SoftwareUpdateSettings[] = {
    {.name = "Item", .type = MDM_T_STRING, .flags = MDM_SKF_REQUIRED, .values = v_Settings_Settings_SoftwareUpdateSettings_Item, .nvalues = 1},
    {.name = "RecommendationCadence", .type = MDM_T_INTEGER, .flags = MDM_SKF_REQUIRED, .values = v_Settings_Settings_SoftwareUpdateSettings_RecommendationCadence, .nvalues = 3},
};
static const char *const v_Settings_Settings_AccessibilitySettings_Item[] = {
    "AccessibilitySettings",
};
static const char *const v_Settings_Settings_AccessibilitySettings_TextSize[] = {
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11",
};
static const mdm_schema_key_t k_Settings_Settings_AccessibilitySettings[] = {
    {.name = "Item", .type = MDM_T_STRING, .flags = MDM_SKF_REQUIRED, .values = v_Settings_Settings_AccessibilitySettings_Item, .nvalues = 1},
    {.name = "BoldTextEnabled", .type = MDM_T_BOOLEAN},
    {.name = "IncreaseContrastEnabled", .type = MDM_T_BOOLEAN},
    {.name = "ReduceMotionEnabled", .type = MDM_T_BOOLEAN},
    {.name = "ReduceTransparencyEnabled", .type = MDM_T_BOOLEAN},
    {.name = "TextSize", .type = MDM_T_INTEGER, .values = v_Settings_Settings_AccessibilitySettings_TextSize, .nvalues = 12},
    {.name = "TouchAccommodationsEnabled", .type = MDM_T_BOOLEAN},
    {.name = "VoiceOverEnabled", .type = MDM_T_BOOLEAN},
    {.name = "ZoomEnabled", .type = MDM_T_BOOLEAN},
    {.name = "GrayscaleEnabled", .type = MDM_T_BOOLEAN},
};
static const mdm_schema_key_t k_Settings_Settings[] = {
    {.name = "Wallpaper", .type = MDM_T_DICT, .sub = k_Settings_Settings_Wallpaper, .nsub = 3},
    {.name = "DataRoaming", .type = MDM_T_DICT, .sub = k_Settings_Settings_DataRoaming, .nsub = 2},
    {.name = "VoiceRoaming", .type = MDM_T_DICT, .sub = k_Settings_Settings_VoiceRoaming, .nsub = 2},
    {.name = "PersonalHotspot", .type = MDM_T_DICT, .sub = k_Settings_Settings_PersonalHotspot, .nsub = 2},
    {.name = "Bluetooth", .type = MDM_T_DICT, .sub = k_Settings_Settings_Bluetooth, .nsub = 2},
    {.name = "ApplicationConfiguration", .type = MDM_T_DICT, .sub = k_Settings_Settings_ApplicationConfiguration, .nsub = 3},
    {.name = "ApplicationAttributes", .type = MDM_T_DICT, .sub = k_Settings_Settings_ApplicationAttributes, .nsub = 3},
    {.name = "DeviceName", .type = MDM_T_DICT, .sub = k_Settings_Settings_DeviceName, .nsub = 2},
    {.name = "HostName", .type = MDM_T_DICT, .sub = k_Settings_Settings_HostName, .nsub = 2},
    {.name = "OrganizationInfo", .type = MDM_T_DICT, .sub = k_Settings_Settings_OrganizationInfo, .nsub = 2},
    {.name = "MDMOptions", .type = MDM_T_DICT, .sub = k_Settings_Settings_MDMOptions, .nsub = 2},
    {.name = "MaximumResidentUsers", .type = MDM_T_DICT, .sub = k_Settings_Settings_MaximumResidentUsers, .nsub = 2},
    {.name = "SharedDeviceConfiguration", .type = MDM_T_DICT, .sub = k_Settings_Settings_SharedDeviceConfiguration, .nsub = 11},
    {.name = "DiagnosticSubmission", .type = MDM_T_DICT, .sub = k_Settings_Settings_DiagnosticSubmission, .nsub = 2},
    {.name = "AppAnalytics", .type = MDM_T_DICT, .sub = k_Settings_Settings_AppAnalytics, .nsub = 2},
    {.name = "PasscodeLockGracePeriod", .type = MDM_T_DICT, .sub = k_Settings_Settings_PasscodeLockGracePeriod, .nsub = 2},
    {.name = "TimeZone", .type = MDM_T_DICT, .sub = k_Settings_Settings_TimeZone, .nsub = 2},
    {.name = "SoftwareUpdateSettings", .type = MDM_T_DICT, .sub = k_Settings_Settings_SoftwareUpdateSettings, .nsub = 2},
    {.name = "AccessibilitySettings", .type = MDM_T_DICT, .sub = k_Settings_Settings_AccessibilitySettings, .nsub = 10},
};
static const mdm_schema_key_t k_Settings[] = {
    {.name = "Settings", .type = MDM_T_ARRAY, .flags = MDM_SKF_REQUIRED, .sub = k_Settings_Settings, .nsub = 19, .discriminator = "Item"},
};
static const char *const v_Settings_response[] = {"Settings"};
static const mdm_schema_key_t k_UnlockUserAccount[] = {
    {.name = "UserName", .type = MDM_T_STRING, .flags = MDM_SKF_REQUIRED},
};
static const char *const v_UserList_response[] = {"Users"};
static const mdm_schema_key_t k_ValidateApplications_Identifiers[] = {
    {.name = "IdentifiersItem", .type = MDM_T_STRING},
};
static const mdm_schema_key_t k_ValidateApplications[] = {
    {.name = "Identifiers", .type = MDM_T_ARRAY, .sub = k_ValidateApplications_Identifiers, .nsub = 1},
};
static const mdm_schema_key_t k_VerifyFirmwarePassword[] = {
    {.name = "Password", .type = MDM_T_STRING, .flags = MDM_SKF_REQUIRED},
};
static const char *const v_VerifyFirmwarePassword_response[] = {"VerifyFirmwarePassword"};
static const mdm_schema_key_t k_VerifyRecoveryLock[] = {
    {.name = "Password", .type = MDM_T_STRING, .flags = MDM_SKF_REQUIRED},
};
static const char *const v_VerifyRecoveryLock_response[] = {"PasswordVerified"};

/* Sorted by RequestType (strcmp order) for binary search. */
const mdm_cmd_schema_t mdm__cmd_schemas[] = {
    {
        .request_type = "AccountConfiguration",
        .file = "account.configuration.yaml",
        .os = MDM_OS_MACOS,
        .device_os = MDM_OS_MACOS,
        .user_os = 0,
        .device_channel = true,
        .user_channel = false,
        .keys = k_AccountConfiguration, .nkeys = 8,
    },
    {
        .request_type = "ActivationLockBypassCode",
        .file = "device.activationlock.bypasscode.yaml",
        .os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_VISIONOS,
        .device_os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_VISIONOS,
        .user_os = 0,
        .device_channel = true,
        .user_channel = false,
        .response_keys = v_ActivationLockBypassCode_response, .nresponse_keys = 1,
    },
    {
        .request_type = "ActiveNSExtensions",
        .file = "application.extensions.listactive.yaml",
        .os = MDM_OS_MACOS,
        .device_os = 0,
        .user_os = MDM_OS_MACOS,
        .device_channel = false,
        .user_channel = true,
        .keys = k_ActiveNSExtensions, .nkeys = 1,
        .response_keys = v_ActiveNSExtensions_response, .nresponse_keys = 1,
    },
    {
        .request_type = "ApplyRedemptionCode",
        .file = "application.redemptioncode.yaml",
        .os = MDM_OS_IOS,
        .device_os = MDM_OS_IOS,
        .user_os = 0,
        .device_channel = true,
        .user_channel = false,
        .keys = k_ApplyRedemptionCode, .nkeys = 2,
    },
    {
        .request_type = "AvailableOSUpdates",
        .file = "system.update.available.yaml",
        .os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_TVOS | MDM_OS_SHARED_IPAD,
        .device_os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_TVOS | MDM_OS_SHARED_IPAD,
        .user_os = 0,
        .device_channel = true,
        .user_channel = false,
        .response_keys = v_AvailableOSUpdates_response, .nresponse_keys = 1,
    },
    {
        .request_type = "CertificateList",
        .file = "certificate.list.yaml",
        .os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_TVOS | MDM_OS_VISIONOS | MDM_OS_WATCHOS | MDM_OS_SHARED_IPAD,
        .device_os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_TVOS | MDM_OS_VISIONOS | MDM_OS_WATCHOS | MDM_OS_SHARED_IPAD,
        .user_os = MDM_OS_MACOS,
        .device_channel = true,
        .user_channel = true,
        .keys = k_CertificateList, .nkeys = 1,
        .response_keys = v_CertificateList_response, .nresponse_keys = 1,
    },
    {
        .request_type = "ClearActivationLockBypassCode",
        .file = "device.activationlock.clearbypasscode.yaml",
        .os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_VISIONOS,
        .device_os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_VISIONOS,
        .user_os = 0,
        .device_channel = true,
        .user_channel = false,
    },
    {
        .request_type = "ClearPasscode",
        .file = "passcode.clear.yaml",
        .os = MDM_OS_IOS | MDM_OS_VISIONOS | MDM_OS_WATCHOS,
        .device_os = MDM_OS_IOS | MDM_OS_VISIONOS | MDM_OS_WATCHOS,
        .user_os = 0,
        .device_channel = true,
        .user_channel = false,
        .keys = k_ClearPasscode, .nkeys = 1,
    },
    {
        .request_type = "ClearRestrictionsPassword",
        .file = "device.restrictions.clearpassword.yaml",
        .os = MDM_OS_IOS,
        .device_os = MDM_OS_IOS,
        .user_os = 0,
        .device_channel = true,
        .user_channel = false,
    },
    {
        .request_type = "ContentCachingInformation",
        .file = "information.contentcaching.yaml",
        .os = MDM_OS_MACOS,
        .device_os = MDM_OS_MACOS,
        .user_os = 0,
        .device_channel = true,
        .user_channel = false,
        .response_keys = v_ContentCachingInformation_response, .nresponse_keys = 1,
    },
    {
        .request_type = "DeclarativeManagement",
        .file = "declarativemanagement.yaml",
        .os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_TVOS | MDM_OS_VISIONOS | MDM_OS_WATCHOS | MDM_OS_SHARED_IPAD,
        .device_os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_TVOS | MDM_OS_VISIONOS | MDM_OS_WATCHOS | MDM_OS_SHARED_IPAD,
        .user_os = MDM_OS_MACOS | MDM_OS_SHARED_IPAD,
        .device_channel = true,
        .user_channel = true,
        .keys = k_DeclarativeManagement, .nkeys = 1,
    },
    {
        .request_type = "DeleteUser",
        .file = "user.delete.yaml",
        .os = MDM_OS_MACOS | MDM_OS_SHARED_IPAD,
        .device_os = MDM_OS_MACOS | MDM_OS_SHARED_IPAD,
        .user_os = 0,
        .device_channel = true,
        .user_channel = false,
        .keys = k_DeleteUser, .nkeys = 3,
    },
    {
        .request_type = "DeviceConfigured",
        .file = "device.configured.yaml",
        .os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_TVOS | MDM_OS_VISIONOS | MDM_OS_SHARED_IPAD,
        .device_os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_TVOS | MDM_OS_VISIONOS | MDM_OS_SHARED_IPAD,
        .user_os = 0,
        .device_channel = true,
        .user_channel = false,
    },
    {
        .request_type = "DeviceInformation",
        .file = "information.device.yaml",
        .os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_TVOS | MDM_OS_VISIONOS | MDM_OS_WATCHOS | MDM_OS_SHARED_IPAD,
        .device_os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_TVOS | MDM_OS_VISIONOS | MDM_OS_WATCHOS | MDM_OS_SHARED_IPAD,
        .user_os = MDM_OS_MACOS | MDM_OS_SHARED_IPAD,
        .device_channel = true,
        .user_channel = true,
        .keys = k_DeviceInformation, .nkeys = 2,
        .response_keys = v_DeviceInformation_response, .nresponse_keys = 1,
    },
    {
        .request_type = "DeviceLocation",
        .file = "device.lostmode.location.yaml",
        .os = MDM_OS_IOS | MDM_OS_SHARED_IPAD,
        .device_os = MDM_OS_IOS | MDM_OS_SHARED_IPAD,
        .user_os = 0,
        .device_channel = true,
        .user_channel = false,
        .response_keys = v_DeviceLocation_response, .nresponse_keys = 8,
    },
    {
        .request_type = "DeviceLock",
        .file = "device.lock.yaml",
        .os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_VISIONOS | MDM_OS_WATCHOS | MDM_OS_SHARED_IPAD,
        .device_os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_VISIONOS | MDM_OS_WATCHOS | MDM_OS_SHARED_IPAD,
        .user_os = 0,
        .device_channel = true,
        .user_channel = false,
        .keys = k_DeviceLock, .nkeys = 3,
        .response_keys = v_DeviceLock_response, .nresponse_keys = 1,
    },
    {
        .request_type = "DisableLostMode",
        .file = "device.lostmode.disable.yaml",
        .os = MDM_OS_IOS | MDM_OS_SHARED_IPAD,
        .device_os = MDM_OS_IOS | MDM_OS_SHARED_IPAD,
        .user_os = 0,
        .device_channel = true,
        .user_channel = false,
    },
    {
        .request_type = "DisableRemoteDesktop",
        .file = "remotedesktop.disable.yaml",
        .os = MDM_OS_MACOS,
        .device_os = MDM_OS_MACOS,
        .user_os = 0,
        .device_channel = true,
        .user_channel = false,
    },
    {
        .request_type = "EnableLostMode",
        .file = "device.lostmode.enable.yaml",
        .os = MDM_OS_IOS | MDM_OS_SHARED_IPAD,
        .device_os = MDM_OS_IOS | MDM_OS_SHARED_IPAD,
        .user_os = 0,
        .device_channel = true,
        .user_channel = false,
        .keys = k_EnableLostMode, .nkeys = 3,
    },
    {
        .request_type = "EnableRemoteDesktop",
        .file = "remotedesktop.enable.yaml",
        .os = MDM_OS_MACOS,
        .device_os = MDM_OS_MACOS,
        .user_os = 0,
        .device_channel = true,
        .user_channel = false,
    },
    {
        .request_type = "EraseDevice",
        .file = "device.erase.yaml",
        .os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_TVOS | MDM_OS_VISIONOS | MDM_OS_WATCHOS | MDM_OS_SHARED_IPAD,
        .device_os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_TVOS | MDM_OS_VISIONOS | MDM_OS_WATCHOS | MDM_OS_SHARED_IPAD,
        .user_os = 0,
        .device_channel = true,
        .user_channel = false,
        .keys = k_EraseDevice, .nkeys = 5,
    },
    {
        .request_type = "InstallApplication",
        .file = "application.install.yaml",
        .os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_TVOS | MDM_OS_VISIONOS | MDM_OS_WATCHOS | MDM_OS_SHARED_IPAD,
        .device_os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_TVOS | MDM_OS_VISIONOS | MDM_OS_WATCHOS | MDM_OS_SHARED_IPAD,
        .user_os = MDM_OS_MACOS,
        .device_channel = true,
        .user_channel = true,
        .keys = k_InstallApplication, .nkeys = 10,
        .response_keys = v_InstallApplication_response, .nresponse_keys = 3,
    },
    {
        .request_type = "InstallEnterpriseApplication",
        .file = "application.install.enterprise.yaml",
        .os = MDM_OS_MACOS,
        .device_os = MDM_OS_MACOS,
        .user_os = 0,
        .device_channel = true,
        .user_channel = false,
        .keys = k_InstallEnterpriseApplication, .nkeys = 9,
    },
    {
        .request_type = "InstallMedia",
        .file = "media.install.yaml",
        .os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_SHARED_IPAD,
        .device_os = MDM_OS_IOS | MDM_OS_SHARED_IPAD,
        .user_os = MDM_OS_MACOS,
        .device_channel = true,
        .user_channel = true,
        .keys = k_InstallMedia, .nkeys = 8,
        .response_keys = v_InstallMedia_response, .nresponse_keys = 6,
    },
    {
        .request_type = "InstallProfile",
        .file = "profile.install.yaml",
        .os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_TVOS | MDM_OS_VISIONOS | MDM_OS_WATCHOS | MDM_OS_SHARED_IPAD,
        .device_os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_TVOS | MDM_OS_VISIONOS | MDM_OS_WATCHOS | MDM_OS_SHARED_IPAD,
        .user_os = MDM_OS_MACOS | MDM_OS_SHARED_IPAD,
        .device_channel = true,
        .user_channel = true,
        .keys = k_InstallProfile, .nkeys = 1,
    },
    {
        .request_type = "InstallProvisioningProfile",
        .file = "profile.provisioning.install.yaml",
        .os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_TVOS | MDM_OS_VISIONOS | MDM_OS_WATCHOS | MDM_OS_SHARED_IPAD,
        .device_os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_TVOS | MDM_OS_VISIONOS | MDM_OS_WATCHOS | MDM_OS_SHARED_IPAD,
        .user_os = 0,
        .device_channel = true,
        .user_channel = false,
        .keys = k_InstallProvisioningProfile, .nkeys = 1,
    },
    {
        .request_type = "InstalledApplicationList",
        .file = "application.installed.list.yaml",
        .os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_TVOS | MDM_OS_VISIONOS | MDM_OS_WATCHOS | MDM_OS_SHARED_IPAD,
        .device_os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_TVOS | MDM_OS_VISIONOS | MDM_OS_WATCHOS | MDM_OS_SHARED_IPAD,
        .user_os = MDM_OS_MACOS,
        .device_channel = true,
        .user_channel = true,
        .keys = k_InstalledApplicationList, .nkeys = 3,
        .response_keys = v_InstalledApplicationList_response, .nresponse_keys = 1,
    },
    {
        .request_type = "InviteToProgram",
        .file = "application.invitetoprogram.yaml",
        .os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_SHARED_IPAD,
        .device_os = MDM_OS_IOS,
        .user_os = MDM_OS_MACOS | MDM_OS_SHARED_IPAD,
        .device_channel = true,
        .user_channel = true,
        .keys = k_InviteToProgram, .nkeys = 2,
        .response_keys = v_InviteToProgram_response, .nresponse_keys = 1,
    },
    {
        .request_type = "LOMDeviceRequest",
        .file = "lom.devicerequest.yaml",
        .os = MDM_OS_MACOS,
        .device_os = MDM_OS_MACOS,
        .user_os = 0,
        .device_channel = true,
        .user_channel = false,
        .keys = k_LOMDeviceRequest, .nkeys = 1,
        .response_keys = v_LOMDeviceRequest_response, .nresponse_keys = 1,
    },
    {
        .request_type = "LOMSetupRequest",
        .file = "lom.setuprequest.yaml",
        .os = MDM_OS_MACOS,
        .device_os = MDM_OS_MACOS,
        .user_os = 0,
        .device_channel = true,
        .user_channel = false,
        .response_keys = v_LOMSetupRequest_response, .nresponse_keys = 3,
    },
    {
        .request_type = "LogOutUser",
        .file = "user.logout.yaml",
        .os = MDM_OS_SHARED_IPAD,
        .device_os = MDM_OS_SHARED_IPAD,
        .user_os = 0,
        .device_channel = true,
        .user_channel = false,
    },
    {
        .request_type = "ManagedApplicationAttributes",
        .file = "managed.application.attributes.yaml",
        .os = MDM_OS_IOS | MDM_OS_TVOS | MDM_OS_VISIONOS | MDM_OS_WATCHOS | MDM_OS_SHARED_IPAD,
        .device_os = MDM_OS_IOS | MDM_OS_TVOS | MDM_OS_VISIONOS | MDM_OS_WATCHOS | MDM_OS_SHARED_IPAD,
        .user_os = 0,
        .device_channel = true,
        .user_channel = false,
        .keys = k_ManagedApplicationAttributes, .nkeys = 1,
        .response_keys = v_ManagedApplicationAttributes_response, .nresponse_keys = 1,
    },
    {
        .request_type = "ManagedApplicationConfiguration",
        .file = "managed.application.configuration.yaml",
        .os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_TVOS | MDM_OS_VISIONOS | MDM_OS_WATCHOS | MDM_OS_SHARED_IPAD,
        .device_os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_TVOS | MDM_OS_VISIONOS | MDM_OS_WATCHOS | MDM_OS_SHARED_IPAD,
        .user_os = 0,
        .device_channel = true,
        .user_channel = false,
        .keys = k_ManagedApplicationConfiguration, .nkeys = 1,
        .response_keys = v_ManagedApplicationConfiguration_response, .nresponse_keys = 1,
    },
    {
        .request_type = "ManagedApplicationFeedback",
        .file = "managed.application.feedback.yaml",
        .os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_TVOS | MDM_OS_VISIONOS | MDM_OS_SHARED_IPAD,
        .device_os = MDM_OS_IOS | MDM_OS_TVOS | MDM_OS_VISIONOS | MDM_OS_SHARED_IPAD,
        .user_os = MDM_OS_MACOS,
        .device_channel = true,
        .user_channel = true,
        .keys = k_ManagedApplicationFeedback, .nkeys = 2,
        .response_keys = v_ManagedApplicationFeedback_response, .nresponse_keys = 1,
    },
    {
        .request_type = "ManagedApplicationList",
        .file = "application.managed.list.yaml",
        .os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_TVOS | MDM_OS_VISIONOS | MDM_OS_WATCHOS | MDM_OS_SHARED_IPAD,
        .device_os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_TVOS | MDM_OS_VISIONOS | MDM_OS_WATCHOS | MDM_OS_SHARED_IPAD,
        .user_os = MDM_OS_MACOS,
        .device_channel = true,
        .user_channel = true,
        .keys = k_ManagedApplicationList, .nkeys = 1,
        .response_keys = v_ManagedApplicationList_response, .nresponse_keys = 1,
    },
    {
        .request_type = "ManagedMediaList",
        .file = "media.managed.list.yaml",
        .os = MDM_OS_IOS | MDM_OS_SHARED_IPAD,
        .device_os = MDM_OS_IOS | MDM_OS_SHARED_IPAD,
        .user_os = 0,
        .device_channel = true,
        .user_channel = false,
        .response_keys = v_ManagedMediaList_response, .nresponse_keys = 1,
    },
    {
        .request_type = "NSExtensionMappings",
        .file = "application.extensions.mappings.yaml",
        .os = MDM_OS_MACOS,
        .device_os = 0,
        .user_os = MDM_OS_MACOS,
        .device_channel = false,
        .user_channel = true,
        .response_keys = v_NSExtensionMappings_response, .nresponse_keys = 1,
    },
    {
        .request_type = "OSUpdateStatus",
        .file = "system.update.status.yaml",
        .os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_TVOS | MDM_OS_SHARED_IPAD,
        .device_os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_TVOS | MDM_OS_SHARED_IPAD,
        .user_os = 0,
        .device_channel = true,
        .user_channel = false,
        .response_keys = v_OSUpdateStatus_response, .nresponse_keys = 1,
    },
    {
        .request_type = "PlayLostModeSound",
        .file = "device.lostmode.playsound.yaml",
        .os = MDM_OS_IOS | MDM_OS_SHARED_IPAD,
        .device_os = MDM_OS_IOS | MDM_OS_SHARED_IPAD,
        .user_os = 0,
        .device_channel = true,
        .user_channel = false,
    },
    {
        .request_type = "ProfileList",
        .file = "profile.list.yaml",
        .os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_TVOS | MDM_OS_VISIONOS | MDM_OS_WATCHOS | MDM_OS_SHARED_IPAD,
        .device_os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_TVOS | MDM_OS_VISIONOS | MDM_OS_WATCHOS | MDM_OS_SHARED_IPAD,
        .user_os = MDM_OS_MACOS | MDM_OS_SHARED_IPAD,
        .device_channel = true,
        .user_channel = true,
        .keys = k_ProfileList, .nkeys = 1,
        .response_keys = v_ProfileList_response, .nresponse_keys = 1,
    },
    {
        .request_type = "ProvisioningProfileList",
        .file = "profile.provisioning.list.yaml",
        .os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_TVOS | MDM_OS_VISIONOS | MDM_OS_WATCHOS | MDM_OS_SHARED_IPAD,
        .device_os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_TVOS | MDM_OS_VISIONOS | MDM_OS_WATCHOS | MDM_OS_SHARED_IPAD,
        .user_os = 0,
        .device_channel = true,
        .user_channel = false,
        .keys = k_ProvisioningProfileList, .nkeys = 1,
        .response_keys = v_ProvisioningProfileList_response, .nresponse_keys = 1,
    },
    {
        .request_type = "RefreshCellularPlans",
        .file = "device.esim.yaml",
        .os = MDM_OS_IOS | MDM_OS_SHARED_IPAD,
        .device_os = MDM_OS_IOS | MDM_OS_SHARED_IPAD,
        .user_os = 0,
        .device_channel = true,
        .user_channel = false,
        .keys = k_RefreshCellularPlans, .nkeys = 1,
    },
    {
        .request_type = "RemoveApplication",
        .file = "application.remove.yaml",
        .os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_TVOS | MDM_OS_VISIONOS | MDM_OS_WATCHOS | MDM_OS_SHARED_IPAD,
        .device_os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_TVOS | MDM_OS_VISIONOS | MDM_OS_WATCHOS | MDM_OS_SHARED_IPAD,
        .user_os = 0,
        .device_channel = true,
        .user_channel = false,
        .keys = k_RemoveApplication, .nkeys = 1,
    },
    {
        .request_type = "RemoveMedia",
        .file = "media.remove.yaml",
        .os = MDM_OS_IOS | MDM_OS_SHARED_IPAD,
        .device_os = MDM_OS_IOS | MDM_OS_SHARED_IPAD,
        .user_os = 0,
        .device_channel = true,
        .user_channel = false,
        .keys = k_RemoveMedia, .nkeys = 3,
    },
    {
        .request_type = "RemoveProfile",
        .file = "profile.remove.yaml",
        .os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_TVOS | MDM_OS_VISIONOS | MDM_OS_WATCHOS | MDM_OS_SHARED_IPAD,
        .device_os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_TVOS | MDM_OS_VISIONOS | MDM_OS_WATCHOS | MDM_OS_SHARED_IPAD,
        .user_os = MDM_OS_MACOS | MDM_OS_SHARED_IPAD,
        .device_channel = true,
        .user_channel = true,
        .keys = k_RemoveProfile, .nkeys = 1,
    },
    {
        .request_type = "RemoveProvisioningProfile",
        .file = "profile.provisioning.remove.yaml",
        .os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_TVOS | MDM_OS_VISIONOS | MDM_OS_WATCHOS | MDM_OS_SHARED_IPAD,
        .device_os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_TVOS | MDM_OS_VISIONOS | MDM_OS_WATCHOS | MDM_OS_SHARED_IPAD,
        .user_os = 0,
        .device_channel = true,
        .user_channel = false,
        .keys = k_RemoveProvisioningProfile, .nkeys = 1,
    },
    {
        .request_type = "RequestMirroring",
        .file = "mirroring.request.yaml",
        .os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_SHARED_IPAD,
        .device_os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_SHARED_IPAD,
        .user_os = 0,
        .device_channel = true,
        .user_channel = false,
        .keys = k_RequestMirroring, .nkeys = 4,
        .response_keys = v_RequestMirroring_response, .nresponse_keys = 1,
    },
    {
        .request_type = "RequestUnlockToken",
        .file = "passcode.unlocktoken.yaml",
        .os = MDM_OS_IOS,
        .device_os = MDM_OS_IOS,
        .user_os = 0,
        .device_channel = true,
        .user_channel = false,
        .response_keys = v_RequestUnlockToken_response, .nresponse_keys = 1,
    },
    {
        .request_type = "RestartDevice",
        .file = "device.restart.yaml",
        .os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_TVOS | MDM_OS_SHARED_IPAD,
        .device_os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_TVOS | MDM_OS_SHARED_IPAD,
        .user_os = 0,
        .device_channel = true,
        .user_channel = false,
        .keys = k_RestartDevice, .nkeys = 3,
    },
    {
        .request_type = "Restrictions",
        .file = "device.restrictions.list.yaml",
        .os = MDM_OS_IOS | MDM_OS_TVOS | MDM_OS_VISIONOS | MDM_OS_WATCHOS | MDM_OS_SHARED_IPAD,
        .device_os = MDM_OS_IOS | MDM_OS_TVOS | MDM_OS_VISIONOS | MDM_OS_WATCHOS | MDM_OS_SHARED_IPAD,
        .user_os = MDM_OS_SHARED_IPAD,
        .device_channel = true,
        .user_channel = true,
        .keys = k_Restrictions, .nkeys = 1,
        .response_keys = v_Restrictions_response, .nresponse_keys = 2,
    },
    {
        .request_type = "RotateFileVaultKey",
        .file = "rotate.file.vault.key.yaml",
        .os = MDM_OS_MACOS,
        .device_os = MDM_OS_MACOS,
        .user_os = 0,
        .device_channel = true,
        .user_channel = false,
        .keys = k_RotateFileVaultKey, .nkeys = 4,
        .response_keys = v_RotateFileVaultKey_response, .nresponse_keys = 1,
    },
    {
        .request_type = "ScheduleOSUpdate",
        .file = "system.update.schedule.yaml",
        .os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_TVOS | MDM_OS_SHARED_IPAD,
        .device_os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_TVOS | MDM_OS_SHARED_IPAD,
        .user_os = 0,
        .device_channel = true,
        .user_channel = false,
        .keys = k_ScheduleOSUpdate, .nkeys = 1,
        .response_keys = v_ScheduleOSUpdate_response, .nresponse_keys = 1,
    },
    {
        .request_type = "ScheduleOSUpdateScan",
        .file = "system.update.scan.yaml",
        .os = MDM_OS_MACOS,
        .device_os = MDM_OS_MACOS,
        .user_os = 0,
        .device_channel = true,
        .user_channel = false,
        .keys = k_ScheduleOSUpdateScan, .nkeys = 1,
        .response_keys = v_ScheduleOSUpdateScan_response, .nresponse_keys = 1,
    },
    {
        .request_type = "SecurityInfo",
        .file = "information.security.yaml",
        .os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_TVOS | MDM_OS_VISIONOS | MDM_OS_WATCHOS | MDM_OS_SHARED_IPAD,
        .device_os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_TVOS | MDM_OS_VISIONOS | MDM_OS_WATCHOS | MDM_OS_SHARED_IPAD,
        .user_os = MDM_OS_MACOS,
        .device_channel = true,
        .user_channel = true,
        .response_keys = v_SecurityInfo_response, .nresponse_keys = 1,
    },
    {
        .request_type = "SetAutoAdminPassword",
        .file = "set.auto.admin.password.yaml",
        .os = MDM_OS_MACOS,
        .device_os = MDM_OS_MACOS,
        .user_os = 0,
        .device_channel = true,
        .user_channel = false,
        .keys = k_SetAutoAdminPassword, .nkeys = 2,
    },
    {
        .request_type = "SetFirmwarePassword",
        .file = "passcode.firmware.set.yaml",
        .os = MDM_OS_MACOS,
        .device_os = MDM_OS_MACOS,
        .user_os = 0,
        .device_channel = true,
        .user_channel = false,
        .keys = k_SetFirmwarePassword, .nkeys = 3,
        .response_keys = v_SetFirmwarePassword_response, .nresponse_keys = 1,
    },
    {
        .request_type = "SetRecoveryLock",
        .file = "passcode.recovery.set.yaml",
        .os = MDM_OS_MACOS,
        .device_os = MDM_OS_MACOS,
        .user_os = 0,
        .device_channel = true,
        .user_channel = false,
        .keys = k_SetRecoveryLock, .nkeys = 2,
    },
    {
        .request_type = "Settings",
        .file = "settings.yaml",
        .os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_TVOS | MDM_OS_VISIONOS | MDM_OS_WATCHOS | MDM_OS_SHARED_IPAD,
        .device_os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_TVOS | MDM_OS_VISIONOS | MDM_OS_WATCHOS | MDM_OS_SHARED_IPAD,
        .user_os = MDM_OS_MACOS | MDM_OS_SHARED_IPAD,
        .device_channel = true,
        .user_channel = true,
        .keys = k_Settings, .nkeys = 1,
        .response_keys = v_Settings_response, .nresponse_keys = 1,
    },
    {
        .request_type = "ShutDownDevice",
        .file = "device.shutdown.yaml",
        .os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_SHARED_IPAD,
        .device_os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_SHARED_IPAD,
        .user_os = 0,
        .device_channel = true,
        .user_channel = false,
    },
    {
        .request_type = "StopMirroring",
        .file = "mirroring.stop.yaml",
        .os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_SHARED_IPAD,
        .device_os = MDM_OS_IOS | MDM_OS_MACOS | MDM_OS_SHARED_IPAD,
        .user_os = 0,
        .device_channel = true,
        .user_channel = false,
    },
    {
        .request_type = "UnlockUserAccount",
        .file = "user.unlock.yaml",
        .os = MDM_OS_MACOS,
        .device_os = MDM_OS_MACOS,
        .user_os = 0,
        .device_channel = true,
        .user_channel = false,
        .keys = k_UnlockUserAccount, .nkeys = 1,
    },
    {
        .request_type = "UserConfigured",
        .file = "user.configured.yaml",
        .os = MDM_OS_IOS | MDM_OS_SHARED_IPAD,
        .device_os = MDM_OS_IOS,
        .user_os = MDM_OS_SHARED_IPAD,
        .device_channel = true,
        .user_channel = true,
    },
    {
        .request_type = "UserList",
        .file = "user.list.yaml",
        .os = MDM_OS_MACOS | MDM_OS_SHARED_IPAD,
        .device_os = MDM_OS_MACOS | MDM_OS_SHARED_IPAD,
        .user_os = 0,
        .device_channel = true,
        .user_channel = false,
        .response_keys = v_UserList_response, .nresponse_keys = 1,
    },
    {
        .request_type = "ValidateApplications",
        .file = "application.validate.yaml",
        .os = MDM_OS_IOS | MDM_OS_TVOS | MDM_OS_VISIONOS | MDM_OS_SHARED_IPAD,
        .device_os = MDM_OS_IOS | MDM_OS_TVOS | MDM_OS_VISIONOS | MDM_OS_SHARED_IPAD,
        .user_os = 0,
        .device_channel = true,
        .user_channel = false,
        .keys = k_ValidateApplications, .nkeys = 1,
    },
    {
        .request_type = "VerifyFirmwarePassword",
        .file = "passcode.firmware.verify.yaml",
        .os = MDM_OS_MACOS,
        .device_os = MDM_OS_MACOS,
        .user_os = 0,
        .device_channel = true,
        .user_channel = false,
        .keys = k_VerifyFirmwarePassword, .nkeys = 1,
        .response_keys = v_VerifyFirmwarePassword_response, .nresponse_keys = 1,
    },
    {
        .request_type = "VerifyRecoveryLock",
        .file = "passcode.recovery.verify.yaml",
        .os = MDM_OS_MACOS,
        .device_os = MDM_OS_MACOS,
        .user_os = 0,
        .device_channel = true,
        .user_channel = false,
        .keys = k_VerifyRecoveryLock, .nkeys = 1,
        .response_keys = v_VerifyRecoveryLock_response, .nresponse_keys = 1,
    },
};

const size_t mdm__cmd_schema_count = 66;
