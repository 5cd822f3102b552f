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

sub main {
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

exit main();
