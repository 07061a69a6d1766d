/* plist_parse_bench: what reading a device's XML message costs through
 * mdm_plist_parse, as the server calls it: with the quick reader, and on
 * the usual path (the same message with one space more in its <plist> tag,
 * which the quick reader leaves to it: nesting checked, libplist's XML
 * reader, text checked); and libplist's reader alone (plist_from_xml).
 *
 * Messages: an Idle status, an Acknowledged report, a TokenUpdate-shaped
 * check-in without its data values (they take the usual path) and a
 * DeviceInformation answer of 20 queries. The two readers run in
 * alternating blocks, ROUNDS rounds of ITER parses each, so that the
 * machine's noise falls on both alike; it prints the best and median
 * ns per parse of each, and their ratio.
 *
 * usage: plist_parse_bench [ROUNDS [ITER]]     (default 15 20000) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <plist/plist.h>

#include "util/plistjson.h"

#define HEAD                                                                                    \
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST " \
    "1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n<plist version=\"1.0\">\n"

static const char idle[] = HEAD "<dict>\n\t<key>Status</key>\n\t<string>Idle</string>\n"
                                "\t<key>UDID</key>\n\t<string>00008030-001A2B3C4D5E6F70</string>\n"
                                "</dict>\n</plist>\n";

static const char ack[] = HEAD
    "<dict>\n\t<key>CommandUUID</key>\n\t<string>0F6C3E0A-1B2C-4D5E-8F90-A1B2C3D4E5F6</string>\n"
    "\t<key>Status</key>\n\t<string>Acknowledged</string>\n\t<key>UDID</key>\n"
    "\t<string>00008030-001A2B3C4D5E6F70</string>\n</dict>\n</plist>\n";

static const char checkin[] = HEAD
    "<dict>\n\t<key>AwaitingConfiguration</key>\n\t<false/>\n\t<key>MessageType</key>\n"
    "\t<string>TokenUpdate</string>\n\t<key>PushMagic</key>\n"
    "\t<string>5E9A1F0C-7B3D-4C2E-9A8F-1D2C3B4A5F6E</string>\n\t<key>Topic</key>\n"
    "\t<string>com.apple.mgmt.External.0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d</string>\n"
    "\t<key>UDID</key>\n\t<string>00008030-001A2B3C4D5E6F70</string>\n</dict>\n</plist>\n";

static char devinfo[8192];

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static double run(const char *doc, size_t len, int how, int iter)
{
    double t0 = now_ns();
    for (int i = 0; i < iter; i++) {
        plist_t p = NULL;
        if (how != 2) {
            mdm_err_t err = {0};
            if (mdm_plist_parse(doc, len, 0, &p, &err) != 0) {
                fprintf(stderr, "parse failed: %s\n", err.msg);
                exit(1);
            }
        } else {
            plist_from_xml(doc, (uint32_t)len, &p);
            if (p == NULL) {
                fprintf(stderr, "plist_from_xml failed\n");
                exit(1);
            }
        }
        plist_free(p);
    }
    return (now_ns() - t0) / iter;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 15, iter = argc > 2 ? atoi(argv[2]) : 20000;
    if (rounds < 1 || rounds > 1000 || iter < 1)
        return 2;
    size_t o = (size_t)snprintf(devinfo, sizeof(devinfo),
                                HEAD "<dict>\n\t<key>CommandUUID</key>\n\t<string>0F6C3E0A</string>\n"
                                     "\t<key>QueryResponses</key>\n\t<dict>\n");
    for (int i = 0; i < 20; i++)
        o += (size_t)snprintf(devinfo + o, sizeof(devinfo) - o,
                              "\t\t<key>Query%02d</key>\n\t\t<string>value &amp; more %d</string>\n",
                              i, i * 7919);
    snprintf(devinfo + o, sizeof(devinfo) - o,
             "\t\t<key>IsSupervised</key>\n\t\t<true/>\n\t\t<key>BatteryCycles</key>\n"
             "\t\t<integer>412</integer>\n\t</dict>\n\t<key>Status</key>\n"
             "\t<string>Acknowledged</string>\n\t<key>UDID</key>\n\t<string>0000</string>\n"
             "</dict>\n</plist>\n");
    const struct {
        const char *name, *doc;
    } msgs[] = {{"idle", idle}, {"acknowledged", ack}, {"tokenupdate", checkin},
                {"deviceinformation", devinfo}};
    printf("ns per parse, median of %d rounds of %d (best in brackets)\n", rounds, iter);
    printf("%-18s %6s %16s %16s %16s %8s\n", "message", "bytes", "quick", "usual path",
           "plist_from_xml", "usual/quick");
    for (size_t m = 0; m < sizeof(msgs) / sizeof(msgs[0]); m++) {
        size_t len = strlen(msgs[m].doc);
        /* The usual path's copy: "<plist version=\"1.0\" >". */
        char *usual = malloc(len + 2);
        const char *tag = strstr(msgs[m].doc, "<plist version=\"1.0\">");
        size_t at = (size_t)(tag - msgs[m].doc) + strlen("<plist version=\"1.0\"");
        memcpy(usual, msgs[m].doc, at);
        usual[at] = ' ';
        memcpy(usual + at + 1, msgs[m].doc + at, len - at + 1);
        if (mdm__plist_xml_quick(usual, len + 1, MDM_PLIST_MAX_DEPTH) != NULL ||
            mdm__plist_xml_quick(msgs[m].doc, len, MDM_PLIST_MAX_DEPTH) == NULL) {
            fprintf(stderr, "%s: the quick reader does not take the plain one only\n", msgs[m].name);
            return 1;
        }
        double t[3][1000];
        for (int r = 0; r < rounds; r++) {
            t[0][r] = run(msgs[m].doc, len, 0, iter);
            t[1][r] = run(usual, len + 1, 1, iter);
            t[2][r] = run(msgs[m].doc, len, 2, iter);
        }
        for (int k = 0; k < 3; k++)
            qsort(t[k], (size_t)rounds, sizeof(double), cmp_d);
        char cell[3][32];
        for (int k = 0; k < 3; k++)
            snprintf(cell[k], sizeof(cell[k]), "%.0f (%.0f)", t[k][rounds / 2], t[k][0]);
        printf("%-18s %6zu %16s %16s %16s %7.2fx\n", msgs[m].name, len, cell[0], cell[1], cell[2],
               t[1][rounds / 2] / t[0][rounds / 2]);
        free(usual);
    }
    return 0;
}
