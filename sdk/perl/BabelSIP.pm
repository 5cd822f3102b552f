package BabelSIP;
# The babelsip Perl SDK: what a route file written in Perl can use.
#
# A route file defines `sub on_request { my ($req) = @_; ... }` and
# optionally `on_failure($req, $reply)` and `on_reply($req, $reply)`; the
# runner (runner.pl) loads it and speaks sdk/PROTOCOL.md with the host.
# The request API lives in BabelSIP::Request, the protocol loop in
# BabelSIP::Session. This module picks the JSON library and offers `log`.
#
# JSON: Cpanel::JSON::XS, else JSON::XS (Debian: libcpanel-json-xs-perl,
# libjson-xs-perl), else the core JSON::PP, which is about ten times slower
# (FACTS.md). BABELSIP_PERL_JSON=PP (or a module name) forces one.
use strict;
use warnings;

our $VERSION = '0.1.0';
our $JSON_CLASS;
my ($CODEC, $CANONICAL);

BEGIN {
    my $want = $ENV{BABELSIP_PERL_JSON} // '';
    my @order = ('Cpanel::JSON::XS', 'JSON::XS', 'JSON::PP');
    if ($want ne '') {
        my %alias = (PP => 'JSON::PP', XS => 'JSON::XS', CPANEL => 'Cpanel::JSON::XS');
        @order = ($alias{uc $want} // $want, 'JSON::PP');
    }
    for my $class (@order) {
        (my $file = "$class.pm") =~ s{::}{/}g;
        if (eval { require $file; 1 }) {
            $JSON_CLASS = $class;
            last;
        }
    }
    die "BabelSIP: no JSON module found (tried @order)\n" unless $JSON_CLASS;
}

# utf8: bytes on the wire, Perl character strings in the script.
$CODEC = $JSON_CLASS->new->utf8->allow_nonref(0);
$CANONICAL = $JSON_CLASS->new->utf8->canonical(1)->allow_nonref(1);

sub json_class { $JSON_CLASS }

sub sdk_name { "babelsip-perl/$VERSION ($JSON_CLASS)" }

# One protocol line (bytes, without the newline) -> Perl data; dies on bad JSON.
sub decode_line { $CODEC->decode($_[0]) }

# Perl data -> one protocol line of bytes, without the newline. The encoders
# above escape control characters, so the line never holds a raw newline.
sub encode_line { $CODEC->encode($_[0]) }

# A stable string for comparing data (vars before and after a handler).
sub canonical { $CANONICAL->encode($_[0]) }

# The session of this process (set by BabelSIP::Session->run), for log().
our $SESSION;

# BabelSIP::log($message, $level): a line in the host's log for this route.
# $level is debug, info (the default), warning or error. Named with the
# package because a bare `log` is Perl's logarithm.
sub log {
    my ($message, $level) = @_;
    if ($SESSION) {
        $SESSION->log_line("$message", $level // 'info');
    } else {
        print STDERR "$message\n";
    }
    return;
}

1;
