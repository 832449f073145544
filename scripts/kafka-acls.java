// Administration of a secured test broker (`scripts/kafka up --secure`), as
// its admin user. Run through `scripts/kafka acls` / `scripts/kafka scram`,
// or:
//   java -cp "$(scripts/kafka fetch)/*" scripts/kafka-acls.java ADMIN_PROPS MODE ...
// ADMIN_PROPS is the Java client config of the admin user (STATE_DIR/
// admin.properties: bootstrap, SASL_SSL, SCRAM-SHA-512, the CA).
// Modes:
//   acls                    create the ACLs read from stdin, one per line:
//                           PRINCIPAL RESOURCE PATTERN NAME OPERATION, e.g.
//                           `User:engine topic literal access.requests read`
//                           (RESOURCE: topic, group, transactional_id,
//                           cluster; PATTERN: literal, prefixed; OPERATION:
//                           read, write, describe, create,
//                           idempotent_write, ...). All are ALLOW, from any
//                           host. Blank lines and `#` comments are skipped.
//   scram-set USER PASSWORD set USER's SCRAM-SHA-512 credential
//   scram-delete USER       delete it (open connections fail their next
//                           re-authentication)

import java.io.BufferedReader;
import java.io.FileInputStream;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.Properties;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.ScramCredentialInfo;
import org.apache.kafka.clients.admin.ScramMechanism;
import org.apache.kafka.clients.admin.UserScramCredentialDeletion;
import org.apache.kafka.clients.admin.UserScramCredentialUpsertion;
import org.apache.kafka.common.acl.AccessControlEntry;
import org.apache.kafka.common.acl.AclBinding;
import org.apache.kafka.common.acl.AclOperation;
import org.apache.kafka.common.acl.AclPermissionType;
import org.apache.kafka.common.resource.PatternType;
import org.apache.kafka.common.resource.ResourcePattern;
import org.apache.kafka.common.resource.ResourceType;

public class KafkaAcls {
    public static void main(String[] args) throws Exception {
        if (args.length < 2) {
            usage();
        }
        Properties props = new Properties();
        try (FileInputStream in = new FileInputStream(args[0])) {
            props.load(in);
        }
        try (Admin admin = Admin.create(props)) {
            switch (args[1]) {
                case "acls" -> createAcls(admin);
                case "scram-set" -> {
                    if (args.length != 4) {
                        usage();
                    }
                    admin.alterUserScramCredentials(List.of(new UserScramCredentialUpsertion(
                            args[2],
                            new ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192),
                            args[3]))).all().get();
                    System.err.printf("kafka-acls: SCRAM-SHA-512 credential of %s set%n", args[2]);
                }
                case "scram-delete" -> {
                    if (args.length != 3) {
                        usage();
                    }
                    admin.alterUserScramCredentials(List.of(new UserScramCredentialDeletion(
                            args[2], ScramMechanism.SCRAM_SHA_512))).all().get();
                    System.err.printf("kafka-acls: SCRAM-SHA-512 credential of %s deleted%n", args[2]);
                }
                default -> usage();
            }
        }
    }

    static void usage() {
        System.err.println(
                "usage: kafka-acls.java ADMIN_PROPS acls < LINES | scram-set USER PASSWORD | scram-delete USER");
        System.exit(2);
    }

    static void createAcls(Admin admin) throws Exception {
        List<AclBinding> bindings = new ArrayList<>();
        BufferedReader r = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        String line;
        int n = 0;
        while ((line = r.readLine()) != null) {
            n++;
            String t = line.strip();
            if (t.isEmpty() || t.startsWith("#")) {
                continue;
            }
            String[] f = t.split("\\s+");
            if (f.length != 5) {
                System.err.printf("kafka-acls: line %d: expected PRINCIPAL RESOURCE PATTERN NAME OPERATION: %s%n", n, t);
                System.exit(2);
            }
            ResourceType rt = ResourceType.fromString(f[1].toUpperCase(Locale.ROOT));
            PatternType pt = PatternType.fromString(f[2].toUpperCase(Locale.ROOT));
            AclOperation op = AclOperation.fromString(f[4].toUpperCase(Locale.ROOT));
            if (rt == ResourceType.UNKNOWN || pt == PatternType.UNKNOWN || op == AclOperation.UNKNOWN) {
                System.err.printf("kafka-acls: line %d: unknown resource type, pattern or operation: %s%n", n, t);
                System.exit(2);
            }
            bindings.add(new AclBinding(
                    new ResourcePattern(rt, f[3], pt),
                    new AccessControlEntry(f[0], "*", op, AclPermissionType.ALLOW)));
        }
        admin.createAcls(bindings).all().get();
        System.err.printf("kafka-acls: %d ACLs created%n", bindings.size());
        System.out.println(bindings.size());
    }
}
