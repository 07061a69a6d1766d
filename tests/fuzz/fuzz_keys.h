/* Fixed test keys shared by the fuzz targets that need a PKI (they protect
 * nothing). The CA and the SCEP RA are what fuzz_scep.c decrypts with, so that the
 * committed SCEP corpus (encrypted to this RA) decrypts in every target; the
 * device identity (RSA, issued by the CA, valid 2025..2125) signs the
 * Mdm-Signature and OTA seeds that tests/fuzz/make_seeds.py builds, which
 * reads the PEM blocks from this file. The server identity (EC, for
 * localhost and 127.0.0.1) is what fuzz_http signs profiles with. */
#ifndef MDM_FUZZ_KEYS_H
#define MDM_FUZZ_KEYS_H

static const char FUZZ_CA_KEY_PEM[] =
    "-----BEGIN EC PRIVATE KEY-----\n"
    "MHcCAQEEIJgoFXnzaS4osmAWan3041qRQAr2v0GmSEslD9KGi4vAoAoGCCqGSM49\n"
    "AwEHoUQDQgAEHSzxFhqjD48AHkOd9irKDYfJEzPFvwq1Lr4uHcDxyCgZYbQoa6+l\n"
    "Je/mWSuzC07T5AwUF+3er7WXFZtUlutVIw==\n"
    "-----END EC PRIVATE KEY-----\n";

static const char FUZZ_CA_CERT_PEM[] =
    "-----BEGIN CERTIFICATE-----\n"
    "MIIBuTCCAV+gAwIBAgIBATAKBggqhkjOPQQDAjAxMRUwEwYDVQQKDAxtb29ubWRt\n"
    "IGZ1enoxGDAWBgNVBAMMD21vb25tZG0gZnV6eiBDQTAgFw0yNjExMjgxMDM5MDVa\n"
    "GA8yMTI2MTEwNDEwMzkwNVowMTEVMBMGA1UECgwMbW9vbm1kbSBmdXp6MRgwFgYD\n"
    "VQQDDA9tb29ubWRtIGZ1enogQ0EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAQd\n"
    "LPEWGqMPjwAeQ532KsoNh8kTM8W/CrUuvi4dwPHIKBlhtChrr6Ul7+ZZK7MLTtPk\n"
    "DBQX7d6vtZcVm1SW61Ujo2YwZDAdBgNVHQ4EFgQUabGciTokn9dHYz8b5mN8tr3p\n"
    "HgIwHwYDVR0jBBgwFoAUabGciTokn9dHYz8b5mN8tr3pHgIwEgYDVR0TAQH/BAgw\n"
    "BgEB/wIBADAOBgNVHQ8BAf8EBAMCAYYwCgYIKoZIzj0EAwIDSAAwRQIgYPzfZWo4\n"
    "5HoLRKMlpznozVIO8mmZjoCKvpRZ/F17UeICIQCEH3EUnMIzfR2CXfvAGwIxWAIL\n"
    "ZTkZRa+8G2OJDzbwdw==\n"
    "-----END CERTIFICATE-----\n";

static const char FUZZ_RA_KEY_PEM[] =
    "-----BEGIN PRIVATE KEY-----\n"
    "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC/8ZgC3yr1QoB7\n"
    "tP9pPo6nr3XH+h8LZd729oromxMRDZ+wYZOk1bUrGgKfpDKD5OU0fV10MYYYzmBA\n"
    "bOQ11M4aioC0NUp05Po89BfBmlSR2fQVyao90VouEsEwr5RjBbvZzgaoA2JmiHIj\n"
    "nwFfa1kmlhEku7cauFA5ecSHJO3+aOPGR3JUys97wet+5VFPM7sZIFpfaQNCk8U1\n"
    "1q5P8pKZJszuCDpfCIXC8ghB5sCSPV/bfIM4rVommxJkEt8XcCKYBEx+clpafzYI\n"
    "NwgYVobHvVtunmTtrVh9/056gJy7dlNXEgHcCvNdVcDPqQBtmtbrM2OZuImysI65\n"
    "3u5s6n0vAgMBAAECggEAWRYXMSIGTK4QdxozP1Q3HtH7jxTiasZd3W7hWwN6rnwN\n"
    "xW4MekFsJDSeyhyKC5hl315eTSsdK49BsjU4GFoMTNpC0SE4zRdno3nBOuzX2pf3\n"
    "x1MBrk5oFiFDREcBzpHfNcB/a2Siu6cRnsHSf8iRqKyXCV8MpZytM3f2RKlZwq17\n"
    "YDQAExK9qiIShSkcsz46x1Ad8AHXaBUfZdQ0q0F5HIa2B5P44P2C2S9whB/zXarz\n"
    "QwMy0plHwoBCj1lmuWv8DsQ9OYX9tS30j93GiaheX43Z8LPVp6iyb04Dqs71GALa\n"
    "brCG3513yttIrp3Ypj8/vLAIszN+eTaWHriR0ZGsIQKBgQDfKBIZjP0qk3w29kj/\n"
    "6aYDivyqtYECJ76P/Y8KI7skKf05aM5F6NYTWyidFZCHs9wVOCKdcnx4vVGpMX+k\n"
    "ZRifHxdftkZMXv1+DaB/XLI5eT/RW1HQnX6LkM5zOj+Mhgm7S+oA96p2OM2G6VY1\n"
    "eLMjIbadcGv9Jw5JwMYQnS3+zwKBgQDcMYKIoVWY+4wwjYutE16yCtFnLIGylzUS\n"
    "p6aRVmscuszkbVy6ExfKN+4IGv/sJC1dOK0SdjTmg2oqklbZzWXwafJD3LoTgIYE\n"
    "buWtPjhVmwrVvJSW8X5JXUYsyNTRr1iVuXxYkiod4H2b2kIvdUDL4QVjC75uc5i/\n"
    "db5ooaYzoQKBgCDN4StEYIr7t0zVE5IbJL5slgv6Noa8lPTRz08sRXxhd8oSsA/y\n"
    "1FVwFx5QZzirpfSwldYTWFzfZ7u5fQwLmHz7sxHs15SuehEnq6pNVB3CxzDdfb9v\n"
    "B4U4ukCSFXlw0slntXSC89oBK6Vjc7rUjXDiqdenCRjjvuP0pKkYkgRdAoGBAJ5e\n"
    "faQHZalCQvIo2+z/oXwsi6/JMv9gAawJKKQfo6pmMDea8LZkRRgMYgcyZB9TZc1G\n"
    "ljRREHs6yYEU/6JnOIpRqQ1mE+8y4TEPEeIofhwUBxbzK2vlBQ9/JpnPWEH3+560\n"
    "adrKRcB3VeBienfnvVLl5Rn3uF94hMQvy2M14HQBAoGAdWR0eC1U9nclkyoUzrfJ\n"
    "ULWbc23vWrOSYy6nRwUSvDjaukQST9rL7d7wqvLtNGoo8Ad3XsqNYm1Mwg2XDx1R\n"
    "ZrTjgI4yHvBJn1K2ElbbvkmPVOxNXIVnjAkKsUQCioAuw/oW5c7SwClDl4a4OLkn\n"
    "9BB5UT2P+JgvZE5TtcSr2Ts=\n"
    "-----END PRIVATE KEY-----\n";

static const char FUZZ_RA_CERT_PEM[] =
    "-----BEGIN CERTIFICATE-----\n"
    "MIICfTCCAiSgAwIBAgIBAjAKBggqhkjOPQQDAjAxMRUwEwYDVQQKDAxtb29ubWRt\n"
    "IGZ1enoxGDAWBgNVBAMMD21vb25tZG0gZnV6eiBDQTAgFw0yNjExMjgxMDM5MDVa\n"
    "GA8yMTI2MTEwNDEwMzkwNVowMTEVMBMGA1UECgwMbW9vbm1kbSBmdXp6MRgwFgYD\n"
    "VQQDDA9tb29ubWRtIGZ1enogUkEwggEiMA0GCSqGSIb3DQEBAQUAA4IBDwAwggEK\n"
    "AoIBAQC/8ZgC3yr1QoB7tP9pPo6nr3XH+h8LZd729oromxMRDZ+wYZOk1bUrGgKf\n"
    "pDKD5OU0fV10MYYYzmBAbOQ11M4aioC0NUp05Po89BfBmlSR2fQVyao90VouEsEw\n"
    "r5RjBbvZzgaoA2JmiHIjnwFfa1kmlhEku7cauFA5ecSHJO3+aOPGR3JUys97wet+\n"
    "5VFPM7sZIFpfaQNCk8U11q5P8pKZJszuCDpfCIXC8ghB5sCSPV/bfIM4rVommxJk\n"
    "Et8XcCKYBEx+clpafzYINwgYVobHvVtunmTtrVh9/056gJy7dlNXEgHcCvNdVcDP\n"
    "qQBtmtbrM2OZuImysI653u5s6n0vAgMBAAGjYDBeMAwGA1UdEwEB/wQCMAAwDgYD\n"
    "VR0PAQH/BAQDAgWgMB0GA1UdDgQWBBSJXnSYqF7zBeLpCZmOIopmW+pvzzAfBgNV\n"
    "HSMEGDAWgBRpsZyJOiSf10djPxvmY3y2vekeAjAKBggqhkjOPQQDAgNHADBEAiAA\n"
    "qZ3e6/U8D2A4OPtDU/DCCiKrcASvly6yUjN5nkdWKgIgM9+ljxWQ+JoY5qqWNueH\n"
    "UcLrfp21wBbJlXmeL9ajN+k=\n"
    "-----END CERTIFICATE-----\n";

static const char FUZZ_DEVICE_KEY_PEM[] =
    "-----BEGIN PRIVATE KEY-----\n"
    "MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQCYpaykhwc+V+TS\n"
    "dmeGjCaehnL9ZLbNDcpLgDzPpXmXeSkDAqbmSdQDigxeGE0mg9urk8KWJ92Nm238\n"
    "brg00F5yBIbcIJTD5S6QrXt+oapIXuY6tl2/vd1rsCmIUMJcvVMiojPb1bz/bz3C\n"
    "zleWNfr1wTWDD21gI/+Sotl3CCH/B7gJpAT5Cua+iPtm8ga+bYqrIrM3GQxK07ro\n"
    "bIcJexmEQ23xCJgaY53Uh0rVzL8PxtquG2QbdrzRM205GC+CHJjdkCqmgIg8vaij\n"
    "EeEWA4WJqr255FPMjXb/BRLoycXQvMvIjHj5XDigdh4SuDEev51uPSJ1cbxYmNoC\n"
    "eCd8DvIHAgMBAAECggEAEhQ9OFdNwlKCpXKknEjpIglmgSB2jh6+AOc1TJqaphgR\n"
    "hWvA/LFtzOWCxXo3WQJw+AdOGp6qHOV1x1oNsyOiq/phRp0NQY5ZT4VchQj8tAmZ\n"
    "VwbWX6lLGkAJCz4VZwp9WDLB1Z2g/tfcBsCNmxrVmFnDzrv7BlH9KQ7klrZ94EiI\n"
    "yS6d+RqRlfSKl1qtN+FGwB4jelnbe1jsCOMdNycLQWRTvKkd3cronCppWQUhbHeC\n"
    "RqJrQT9taeJv81ebLlTGFdEzTSI2gRcEZtNhxY0eRxTiEUdkX8f7BHbf5nvYjEUy\n"
    "/EqE2hRUc4gX7/BgldE9Zkr30rd6BMLQBiMrDhrZUQKBgQDVzp0ww94uA1tIwrTE\n"
    "0LHw7WaAJACYtNr8ESNazLfHzGv/VjKvCX0GGq2ZrRzcnZQ1h3s/g+EOeECuWAPC\n"
    "5r0BxUd4ArKY0pO2OYwUwl6wrQkGNVMg+qq3uYnSHCsrluC8/NcTaS2L5OqITVcz\n"
    "Sdbu3v2jZKWdzL6ePvail+jImwKBgQC2xU2zTTusHXVQn/nTObSFk58wfGS1o/E/\n"
    "AxzonfujO7bPNQcI9jn0so+Q/PAu6OY8dr83AbIWyeF4CvsC7/BMRibBmjCgexDl\n"
    "4nBXNnWKx40qJ7XAzFVMJwKpb9GfkKynx4DaXOP84adOh9NaXteOtxPCbHEy67v/\n"
    "LcxH90gFBQKBgEU2/ewrfGGo9IQ5hAuzA+fa8rPI8+h7o+i2I5vhah1kMBIY9Y90\n"
    "ouS2/jwhrpY87R3nHh8RsmncxBOsqosN52ILW3eeZ/LROMBlINQXmE/ZtHIuERs8\n"
    "CsgvaE58j/0setSzhWzjP7tqAALgBrqzzMDHr5SVoIfVIGBaQb2hL9rBAoGAcBO1\n"
    "fgoSWY0G75XqILj2FiNcLuNY7nnF6hoClDKsqIBprc6arcgv6fnFR+eTcXCoHtPC\n"
    "lfyYNJk/hdlV64svE9bA1V+0CfTte8rLkO94TM3pprwLHFswwy341+YV6X9SIOCa\n"
    "B02HEP9fFSz9UiFulbl2iHbvQ4aDFgwDhO4CX/ECgYAArN4dRDCGa34EDdi2u5l6\n"
    "F9BZVdgHS/K9/eTnVBGC1mrsOAbUBv7VJ6+AZT1+OIYCSfLO+Ab4qdJzaEbCsIE3\n"
    "Jl551egj2pUsZpIQQ9hevqCeGGSAkNZL1DPqsKrFTQdZ1r8NtyAnJlGTmCK36De4\n"
    "aXcSawrxsQcdowkvZWS8bA==\n"
    "-----END PRIVATE KEY-----\n";

static const char FUZZ_DEVICE_CERT_PEM[] =
    "-----BEGIN CERTIFICATE-----\n"
    "MIICVzCCAf6gAwIBAgICEAEwCgYIKoZIzj0EAwIwMTEVMBMGA1UECgwMbW9vbm1k\n"
    "bSBmdXp6MRgwFgYDVQQDDA9tb29ubWRtIGZ1enogQ0EwIBcNMjUwMTAxMDAwMDAw\n"
    "WhgPMjEyNTAxMDEwMDAwMDBaMDUxFTATBgNVBAoMDG1vb25tZG0gZnV6ejEcMBoG\n"
    "A1UEAwwTbW9vbm1kbSBmdXp6IGRldmljZTCCASIwDQYJKoZIhvcNAQEBBQADggEP\n"
    "ADCCAQoCggEBAJilrKSHBz5X5NJ2Z4aMJp6Gcv1kts0NykuAPM+leZd5KQMCpuZJ\n"
    "1AOKDF4YTSaD26uTwpYn3Y2bbfxuuDTQXnIEhtwglMPlLpCte36hqkhe5jq2Xb+9\n"
    "3WuwKYhQwly9UyKiM9vVvP9vPcLOV5Y1+vXBNYMPbWAj/5Ki2XcIIf8HuAmkBPkK\n"
    "5r6I+2byBr5tiqsiszcZDErTuuhshwl7GYRDbfEImBpjndSHStXMvw/G2q4bZBt2\n"
    "vNEzbTkYL4IcmN2QKqaAiDy9qKMR4RYDhYmqvbnkU8yNdv8FEujJxdC8y8iMePlc\n"
    "OKB2HhK4MR6/nW49InVxvFiY2gJ4J3wO8gcCAwEAAaM1MDMwDAYDVR0TAQH/BAIw\n"
    "ADAOBgNVHQ8BAf8EBAMCBsAwEwYDVR0lBAwwCgYIKwYBBQUHAwIwCgYIKoZIzj0E\n"
    "AwIDRwAwRAIgd4wBIrYb9VCXLQQMoczO2NgrXt+B8Yl34MjqVg0mvlYCIDI9GGbw\n"
    "4RECyowc3UJAOgiXQJbYUm1RbkFGL5TqQJkX\n"
    "-----END CERTIFICATE-----\n";

static const char FUZZ_SERVER_KEY_PEM[] =
    "-----BEGIN PRIVATE KEY-----\n"
    "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQghmfTS0AyfM0rK8LZ\n"
    "0g4GwO1nILR0+Rfy5ZY/Fkuej1yhRANCAATeRTEn49RyxXLnyQw00rHT9rqlMlnZ\n"
    "gUixgYIHCtVMLVD+xdhUxA3/ViPCgBWUoj4kdt3iCzqR5gzjw277rDM3\n"
    "-----END PRIVATE KEY-----\n";

static const char FUZZ_SERVER_CERT_PEM[] =
    "-----BEGIN CERTIFICATE-----\n"
    "MIIBnzCCAUWgAwIBAgICEAIwCgYIKoZIzj0EAwIwMTEVMBMGA1UECgwMbW9vbm1k\n"
    "bSBmdXp6MRgwFgYDVQQDDA9tb29ubWRtIGZ1enogQ0EwIBcNMjUwMTAxMDAwMDAw\n"
    "WhgPMjEyNTAxMDEwMDAwMDBaMCsxFTATBgNVBAoMDG1vb25tZG0gZnV6ejESMBAG\n"
    "A1UEAwwJbG9jYWxob3N0MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE3kUxJ+PU\n"
    "csVy58kMNNKx0/a6pTJZ2YFIsYGCBwrVTC1Q/sXYVMQN/1YjwoAVlKI+JHbd4gs6\n"
    "keYM48Nu+6wzN6NRME8wDAYDVR0TAQH/BAIwADAOBgNVHQ8BAf8EBAMCB4AwEwYD\n"
    "VR0lBAwwCgYIKwYBBQUHAwEwGgYDVR0RBBMwEYIJbG9jYWxob3N0hwR/AAABMAoG\n"
    "CCqGSM49BAMCA0gAMEUCIQDfdYwFk+LQesemeP5DvHgz2Wexe0Z+X+qK2AJdGkTJ\n"
    "PgIgIMjezwVMsTdByQf1g6KVeTCRcTwWp+4ZnU79bV3ZPGc=\n"
    "-----END CERTIFICATE-----\n";

#endif
