#!/usr/bin/perl
# Stdio runner for Perl routes, started by the host (sdk/PROTOCOL.md §9):
#
#     perl -I sdk/perl sdk/perl/runner.pl ROUTE.pl
#
# Loads the route file, then speaks the protocol on fd 0 / fd 1. The route's
# own print output goes to stderr, so it can never corrupt the protocol
# stream. A route that fails to load is reported as `fatal` (with the file
# and line Perl gives) and the runner exits 1. First of all it forks its
# lifeline watcher (BabelSIP::Lifeline): when the host dies, it ends this
# worker and every process the route started.
#
#     perl -I sdk/perl sdk/perl/runner.pl --dump-contract
#
# prints instead, as one JSON object, the verbs, event accessors and store
# calls this SDK offers (tests/contract compares them with the host's table).
use strict;
use warnings;
use File::Spec ();
use BabelSIP ();
use BabelSIP::Lifeline ();
use BabelSIP::Session ();

my @HOOKS = qw(on_request on_failure on_reply);

sub fatal {
    my ($out, $message, $file, $line) = @_;
    my %msg = (type => 'fatal', message => $message);
    $msg{file} = $file if defined $file;
    $msg{line} = 0 + $line if defined $line;
    syswrite($out, BabelSIP::encode_line(\%msg) . "\n");
    exit 1;
}

# Returns ({hook => coderef}, undef) or (undef, [message, file, line]).
sub load_route {
    my ($file) = @_;
    return (undef, ["cannot read route file: $!", $file]) unless -r $file;
    # Every file starts in package main: its subs become main::on_request etc.
    do $file;
    if (my $err = $@) {
        my ($where_file, $where_line) = $err =~ / at (.+?) line (\d+)/;
        my $first = (split /\n/, $err)[0] // 'failed to load';
        $first =~ s/ at \Q$where_file\E line \d+\.?\z// if defined $where_file;
        return (undef, [$first, $where_file // $file, $where_line]);
    }
    my %hooks;
    for my $hook (@HOOKS) {
        no strict 'refs';
        $hooks{$hook} = \&{"main::$hook"} if defined &{"main::$hook"};
    }
    return (undef, ['the route defines none of ' . join(', ', @HOOKS), $file]) unless %hooks;
    return (\%hooks, undef);
}

# The names are found by trying the SDK's own objects, not read from a list,
# so a missing, misnamed or wrongly wired wrapper shows: every public sub of
# BabelSIP::Request is called in every hook on a fresh request whose event
# records the keys read; one that records a verb, or croaks that it is not
# allowed, is a verb, any other is an event accessor. The subs of the
# host-call objects (store, registrar, dialog) are called on a fake session
# that records the op they send. Same shape as the Python and Java dumps.
my %NOT_ROUTE_API = map { $_ => 1 } qw(new decision_message);

sub probe_request {
    my ($name, $hook) = @_;
    tie my %ev, 'BabelSIP::DumpReads';
    my $req = BabelSIP::Request->new(1, $hook, \%ev, BabelSIP::DumpCalls->new);
    my $refused;
    {
        local $SIG{__WARN__} = sub {};   # placeholder arguments are undef
        eval { $req->$name(); 1 } or $refused = $@ =~ /is not allowed in/;
    }
    my $verbs = $req->decision_message->{verbs};
    return (@$verbs ? $verbs->[0][0] : undef, $refused, [@{ tied(%ev)->{read} }]);
}

sub is_decision {
    my ($name, $hook) = @_;
    my $req = BabelSIP::Request->new(1, $hook, {}, undef);
    local $SIG{__WARN__} = sub {};
    $req->$name();
    return eval { $req->$name(); 1 } ? JSON::PP::false() : JSON::PP::true();
}

sub public_subs {
    my ($package) = @_;
    no strict 'refs';
    return sort grep { !/^_/ && !$NOT_ROUTE_API{$_} && defined &{"${package}::$_"} }
        keys %{"${package}::"};
}

sub dump_contract {
    require JSON::PP;
    my (%verbs, %fields, %calls);
    for my $name (public_subs('BabelSIP::Request')) {
        my (%sent, @allowed, $refused, %read);
        for my $hook (@HOOKS) {
            my ($sends, $no, $keys) = probe_request($name, $hook);
            if (defined $sends) { $sent{$sends} = 1; push @allowed, $hook }
            $refused ||= $no;
            $read{$_} = 1 for @$keys;
        }
        if (%sent || $refused) {
            $verbs{$name} = { sends => (sort keys %sent)[0], hooks => \@allowed,
                              decision => @allowed ? is_decision($name, $allowed[0])
                                                   : JSON::PP::false() };
        } else {
            $fields{$name} = [sort keys %read];
        }
    }
    for my $obj (qw(store registrar dialog)) {
        my $package = 'BabelSIP::' . ucfirst $obj;
        $calls{$obj} = {};
        for my $name (grep { $_ ne 'call' } public_subs($package)) {
            my $log = BabelSIP::DumpCalls->new;
            local $SIG{__WARN__} = sub {};
            $package->new($log, 1)->$name('x');
            $calls{$obj}{$name} = $log->{ops}[0];
        }
    }
    print JSON::PP->new->canonical->encode({ sdk => 'perl', hooks => \@HOOKS, verbs => \%verbs,
                                             fields => \%fields, %calls }), "\n";
    return 0;
}

sub main {
    return dump_contract() if @ARGV == 1 && $ARGV[0] eq '--dump-contract';
    if (@ARGV != 1) {
        print STDERR "usage: perl -I sdk/perl sdk/perl/runner.pl ROUTE.pl\n";
        return 2;
    }
    BabelSIP::Lifeline::watch();   # before the route's code runs
    # The protocol keeps fd 1 (as a private handle); STDOUT becomes stderr.
    open(my $proto, '>&', \*STDOUT) or die "cannot dup stdout: $!\n";
    open(STDOUT, '>&', \*STDERR) or die "cannot redirect stdout: $!\n";
    binmode $proto;
    my $file = File::Spec->rel2abs($ARGV[0]);
    my ($hooks, $error) = load_route($file);
    fatal($proto, @$error) if $error;
    my $session = BabelSIP::Session->new(hooks => $hooks, in => \*STDIN, out => $proto,
                                         file => $file);
    return $session->run;
}

# An event hash that remembers which keys were asked for (and holds nothing).
package BabelSIP::DumpReads;
sub TIEHASH  { bless { read => [] }, $_[0] }
sub FETCH    { push @{ $_[0]{read} }, $_[1]; undef }
sub EXISTS   { push @{ $_[0]{read} }, $_[1]; '' }
sub STORE    { }
sub DELETE   { }
sub CLEAR    { }
sub FIRSTKEY { undef }
sub NEXTKEY  { undef }
sub SCALAR   { 0 }

# A session that records the host calls made through it.
package BabelSIP::DumpCalls;
sub new      { bless { ops => [] }, $_[0] }
sub call     { push @{ $_[0]{ops} }, $_[1]; 1 }
sub log_line { }

package main;
exit main();
