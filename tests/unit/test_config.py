"""The configuration: defaults, the INI file, flags over the file, and every kind of bad value."""

import os

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from serialproxy.config import OPTIONS, load_config
from serialproxy.errors import ConfigError


class ConfigTests(SynchronousTestCase):
    def write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def refused(self, text: str = "", flags=None) -> ConfigError:
        return self.assertRaises(ConfigError, load_config, self.write(text) if text else None, flags)

    def test_defaults(self):
        """With no file and no flags, every option has the original design's default."""
        config = load_config()
        self.assertEqual(
            (config.enabled, config.base_url, config.listen, config.proxyclient_address, config.port_range,
             config.record, config.daemon, config.ssl_only, config.source_is_ipv6, config.cert, config.key,
             config.web, config.serialproxy_port, config.token_ttl, config.allowed_origins),
            (False, "", "", "", (10000, 20000), False, False, False, False, "self.pem", "", "", 6083, 600, ()),
        )
        self.assertEqual(config.database_url, "sqlite:///serialproxy-state/serialproxy.sqlite")
        self.assertEqual(config.listen_endpoint(), "tcp:6083:interface=127.0.0.1:backlog=4096")

    def test_file_values(self):
        """Values from the [serial_console] and [database] sections are read and typed."""
        config = load_config(self.write(
            "[serial_console]\nenabled = yes\nport_range = 100:200\ntoken_ttl = 30\n"
            "listen = ::1\nallowed_origins = https://dash.example.com, console.example.com:8443\n"
            "[database]\nconnection = postgresql://sp@db.example.com/sp\n"))
        self.assertEqual((config.enabled, config.port_range, config.token_ttl), (True, (100, 200), 30))
        self.assertEqual(config.allowed_origins, ("https://dash.example.com", "console.example.com:8443"))
        self.assertEqual(config.database_url, "postgresql://sp@db.example.com/sp")
        self.assertEqual(config.listen_endpoint(), r"tcp:6083:interface=\:\:1:backlog=4096")
        self.assertEqual(config.console_base_url(6083), "ws://[::1]:6083/")

    def test_flags_override_file(self):
        """A command-line flag wins over the file."""
        path = self.write("[serial_console]\nserialproxy_port = 7000\nenabled = false\n")
        config = load_config(path, {"serialproxy-port": "7001", "enabled": "true", "database": "sqlite:///x.db"})
        self.assertEqual((config.serialproxy_port, config.enabled, config.database_url), (7001, True, "sqlite:///x.db"))

    def test_every_option_has_a_flag(self):
        """Each option of the file has a distinct command-line flag."""
        self.assertEqual(len({o.flag for o in OPTIONS}), len(OPTIONS))

    def test_bad_port_range(self):
        """A port range that is not LOW:HIGH within 1-65535 names the option and the value."""
        for bad in ("20000:10000", "10000", "0:10", "1:70000", "a:b"):
            error = self.refused(f"[serial_console]\nport_range = {bad}\n")
            self.assertIn("serial_console.port_range", str(error))
            self.assertIn(repr(bad), str(error))
            self.assertIn("LOW:HIGH", str(error))

    def test_unknown_option(self):
        """An unknown option is refused, listing the known ones."""
        error = self.refused("[serial_console]\nenable = true\n")
        self.assertIn("serial_console.enable", str(error))
        self.assertIn("enabled", error.allowed)

    def test_unknown_section(self):
        """An unknown section is refused, listing the known ones."""
        error = self.refused("[console]\nenabled = true\n")
        self.assertIn("[console]", str(error))
        self.assertIn("serial_console", error.allowed)

    def test_port_out_of_range(self):
        """serialproxy_port outside 0-65535 is refused with the allowed range."""
        error = self.refused(flags={"serialproxy-port": "70000"})
        self.assertEqual(error.option, "serial_console.serialproxy_port")
        self.assertIn("0 to 65535", str(error))

    def test_wrong_type(self):
        """A boolean that is not one and a number that is not one are refused."""
        self.assertIn("true or false", str(self.refused("[serial_console]\nenabled = maybe\n")))
        self.assertIn("whole number", str(self.refused("[serial_console]\ntoken_ttl = 10m\n")))

    def test_unreadable_cert(self):
        """ssl_only with a certificate that cannot be read is refused, naming the file."""
        missing = os.path.abspath(self.mktemp())
        error = self.refused(flags={"ssl-only": "true", "cert": missing})
        self.assertEqual(error.option, "serial_console.cert")
        self.assertIn(missing, str(error))

    def test_ssl_endpoint(self):
        """ssl_only with a readable PEM builds a TLS endpoint and wss:// URLs."""
        pem = self.write("not checked here")
        config = load_config(None, {"ssl-only": "true", "cert": pem})
        self.assertTrue(config.listen_endpoint().startswith("ssl:6083:"))
        self.assertIn("privateKey=", config.listen_endpoint())
        self.assertEqual(config.console_base_url(6083), "wss://127.0.0.1:6083/")

    def test_bad_database_url(self):
        """A database URL of an unknown kind is refused with the allowed forms."""
        error = self.refused("[database]\nconnection = mysql://x/y\n")
        self.assertIn("postgresql://", error.allowed)

    def test_bad_origin_and_address(self):
        """Junk origins and listen addresses are refused."""
        self.assertIn("origin", str(self.refused(flags={"allowed-origins": "ftp://x.example.com"})))
        self.assertEqual(self.refused(flags={"listen": "not an address!"}).option, "serial_console.listen")

    def test_missing_file(self):
        """A config file that cannot be read is refused, naming it."""
        missing = self.mktemp()
        error = self.assertRaises(ConfigError, load_config, missing)
        self.assertIn(missing, str(error))

    def test_base_url_is_kept(self):
        """An explicit base_url is the base of every console URL."""
        config = load_config(None, {"base-url": "wss://console.example.com/"})
        self.assertEqual(config.console_base_url(1234), "wss://console.example.com/")

    @given(st.text(max_size=30))
    def test_junk_never_crashes(self, junk):
        """Any text for a typed option either loads or raises ConfigError, never anything else."""
        for flag in ("port-range", "serialproxy-port", "enabled", "token-ttl", "allowed-origins", "listen"):
            try:
                load_config(None, {flag: junk})
            except ConfigError:
                pass
