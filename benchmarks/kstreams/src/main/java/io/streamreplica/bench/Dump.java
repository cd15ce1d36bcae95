package io.streamreplica.bench;

import java.io.BufferedWriter;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.List;
import java.util.stream.Stream;
import org.rocksdb.ColumnFamilyDescriptor;
import org.rocksdb.ColumnFamilyHandle;
import org.rocksdb.DBOptions;
import org.rocksdb.Options;
import org.rocksdb.RocksDB;
import org.rocksdb.RocksDBException;
import org.rocksdb.RocksIterator;

/**
 * Writes the app's final state for the bench to verify: one JSON line per grain,
 * {"grain": "type/key", "sequence": n, "timestamp_millis": t, "source_cluster": s,
 * "payload_sha256": hex}. Read from the stores' RocksDB directories after KafkaStreams.close()
 * (read-only), so it shows what was persisted, not what a cache held.
 */
final class Dump {
  private Dump() {}

  /** Returns the number of grains written. */
  static long write(Path appStateDir, Path out) throws IOException, RocksDBException {
    RocksDB.loadLibrary();
    List<Path> stores = new ArrayList<>();
    try (Stream<Path> tasks = Files.list(appStateDir)) {
      for (Path task : (Iterable<Path>) tasks::iterator) { // <state.dir>/<app id>/<task>/rocksdb/<store>
        Path store = task.resolve("rocksdb").resolve(ReplicaProcessor.STORE);
        if (Files.isDirectory(store)) {
          stores.add(store);
        }
      }
    }
    if (stores.isEmpty()) {
      throw new IOException("no '" + ReplicaProcessor.STORE + "' store under " + appStateDir);
    }
    long grains = 0;
    MessageDigest sha256 = sha256();
    HexFormat hex = HexFormat.of();
    try (BufferedWriter writer = Files.newBufferedWriter(out, StandardCharsets.UTF_8)) {
      for (Path store : stores) {
        grains += dumpStore(store, writer, sha256, hex);
      }
    }
    return grains;
  }

  private static long dumpStore(Path store, BufferedWriter writer, MessageDigest sha256,
      HexFormat hex) throws IOException, RocksDBException {
    // Open every column family the store has (Kafka Streams may add its own); grains are in
    // the default one.
    List<byte[]> names;
    try (Options options = new Options()) {
      names = RocksDB.listColumnFamilies(options, store.toString());
    }
    List<ColumnFamilyDescriptor> descriptors = new ArrayList<>();
    for (byte[] name : names) {
      descriptors.add(new ColumnFamilyDescriptor(name));
    }
    List<ColumnFamilyHandle> handles = new ArrayList<>();
    long grains = 0;
    try (DBOptions options = new DBOptions();
        RocksDB db = RocksDB.openReadOnly(options, store.toString(), descriptors, handles);
        RocksIterator it = db.newIterator(db.getDefaultColumnFamily())) {
      for (it.seekToFirst(); it.isValid(); it.next()) {
        writer.write(line(it.key(), it.value(), sha256, hex));
        writer.write('\n');
        grains++;
      }
    } finally {
      for (ColumnFamilyHandle handle : handles) {
        handle.close();
      }
    }
    return grains;
  }

  private static String line(byte[] key, byte[] state, MessageDigest sha256, HexFormat hex) {
    ByteBuffer buffer = ByteBuffer.wrap(state);
    long sequence = buffer.getLong();
    long timestamp = buffer.getLong();
    byte[] source = new byte[buffer.getInt()];
    buffer.get(source);
    sha256.reset();
    sha256.update(state, buffer.position(), buffer.remaining());
    return "{\"grain\": " + quote(new String(key, StandardCharsets.UTF_8))
        + ", \"sequence\": " + Long.toUnsignedString(sequence)
        + ", \"timestamp_millis\": " + timestamp
        + ", \"source_cluster\": " + quote(new String(source, StandardCharsets.UTF_8))
        + ", \"payload_sha256\": \"" + hex.formatHex(sha256.digest()) + "\"}";
  }

  static String quote(String text) {
    StringBuilder out = new StringBuilder(text.length() + 2).append('"');
    for (int i = 0; i < text.length(); i++) {
      char c = text.charAt(i);
      if (c == '"' || c == '\\') {
        out.append('\\').append(c);
      } else if (c < 0x20) {
        out.append(String.format("\\u%04x", (int) c));
      } else {
        out.append(c);
      }
    }
    return out.append('"').toString();
  }

  private static MessageDigest sha256() {
    try {
      return MessageDigest.getInstance("SHA-256");
    } catch (NoSuchAlgorithmException e) {
      throw new IllegalStateException("SHA-256 missing from this JVM", e);
    }
  }
}
